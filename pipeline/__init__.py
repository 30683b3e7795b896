"""Audio to Arrow: decoding, resampling, Kaldi fbank, the featurized dataset contract and
the Ray Data graph. Never imports ssast or jobs."""
