"""Features against torchaudio's Kaldi fbank; resampling, downmix, short clips."""

import numpy as np
import pytest
import torch
from torchaudio.compliance import kaldi

from pipeline.features import FbankExtractor, FeatureConfig, prepare_waveform
from pipeline.synth import CLASSES, synthesize


def reference_fbank(wave: np.ndarray) -> np.ndarray:
    """The original SSAST loader's call (reference section 6)."""
    return kaldi.fbank(
        torch.from_numpy(wave)[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    ).numpy()


def test_fbank_equals_torchaudio_kaldi_on_generated_audio():
    rng = np.random.default_rng(0)
    waves = [synthesize(c, 1.3, 16000, rng) for c in CLASSES]
    waves += [
        (0.1 * rng.standard_normal(16000 * 10)).astype(np.float32),
        np.zeros(401, np.float32),
        np.full(400, 0.2, np.float32),
    ]
    ours = FbankExtractor(FeatureConfig(), frames_per_pass=256)(waves)
    for wave, got in zip(waves, ours, strict=True):
        want = reference_fbank(wave)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4


def test_ten_seconds_give_998_frames():
    cfg = FeatureConfig()
    assert cfg.num_frames(160000) == 998
    wave = prepare_waveform(np.zeros((160000, 1), np.float32), 16000, cfg)
    assert FbankExtractor(cfg)([wave])[0].shape == (998, 128)


def _peak_bin(samples: np.ndarray, rate: int) -> int:
    cfg = FeatureConfig()
    wave = prepare_waveform(samples.reshape(-1, 1).astype(np.float32), rate, cfg)
    return int(FbankExtractor(cfg)([wave])[0].mean(axis=0).argmax())


def test_resampling_puts_a_1khz_tone_in_the_right_mel_bin():
    t44 = np.arange(44100 * 2) / 44100
    t16 = np.arange(16000 * 2) / 16000
    native = _peak_bin(0.5 * np.sin(2 * np.pi * 1000 * t16), 16000)
    resampled = _peak_bin(0.5 * np.sin(2 * np.pi * 1000 * t44), 44100)
    # The Kaldi mel scale puts 1 kHz near bin 39 of 128 (20 Hz..8 kHz).
    assert resampled == native and 35 <= native <= 43
    assert _peak_bin(0.5 * np.sin(2 * np.pi * 3000 * t44), 44100) > native + 20


def test_resampled_length_and_dc_removal():
    cfg = FeatureConfig()
    x = np.full((44100, 1), 0.3, np.float32)
    wave = prepare_waveform(x, 44100, cfg)
    assert abs(wave.size - 16000) <= 1
    assert abs(float(wave.mean())) < 1e-6


def test_stereo_is_downmixed_or_first_channel_kept():
    rng = np.random.default_rng(1)
    left, right = rng.standard_normal(16000), rng.standard_normal(16000)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    mixed = prepare_waveform(stereo, 16000, FeatureConfig())
    want = (left + right) / 2
    np.testing.assert_allclose(mixed, want - want.mean(), atol=1e-5)
    first = prepare_waveform(stereo, 16000, FeatureConfig(channel_mix="first"))
    np.testing.assert_allclose(first, left - left.mean(), atol=1e-5)


def test_clips_shorter_than_one_window_are_padded_not_dropped():
    wave = prepare_waveform(np.ones((100, 1), np.float32), 16000, FeatureConfig())
    assert wave.size == 400
    assert FbankExtractor(FeatureConfig())([wave])[0].shape == (1, 128)


def test_feature_config_validation_names_the_field():
    with pytest.raises(ValueError, match="channel_mix"):
        FeatureConfig(channel_mix="left")
    with pytest.raises(ValueError, match="segment_s"):
        FeatureConfig(segment_s=0.01)
