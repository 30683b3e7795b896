"""Manifest rows to feature and error rows: every broken-file class, segments, carried columns."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import soundfile as sf

from pipeline.clips import featurize_table
from pipeline.features import FeatureConfig
from pipeline.manifest import read_manifest

EXPECTED_REASONS = {
    "audio/broken_random_bytes.wav": "unreadable",
    "audio/broken_empty_file.wav": "empty_file",
    "audio/broken_truncated.wav": "unreadable",
    "audio/broken_non_finite.wav": "non_finite",
    "audio/broken_zero_rate.wav": "zero_sample_rate",
    "audio/broken_missing.wav": "missing",
}


def test_every_broken_file_is_reported_and_the_rest_is_intact(corpus):
    manifest, num_good = corpus
    rows = read_manifest(str(manifest))
    features, errors = featurize_table(rows, FeatureConfig())
    got = dict(
        zip(errors.column("path").to_pylist(), errors.column("reason").to_pylist(), strict=True)
    )
    assert got == EXPECTED_REASONS
    assert all(d for d in errors.column("detail").to_pylist())
    assert features.num_rows == num_good
    good = [p for p in rows.column("path").to_pylist() if p not in EXPECTED_REASONS]
    assert features.column("path").to_pylist() == good  # exactly as in the manifest
    assert set(features.column("label").to_pylist()) <= {
        "tone",
        "chirp",
        "noise_burst",
        "harmonic",
        "clicks",
        "am",
        "fm",
    }
    frames = features.column("num_frames").to_numpy()
    lengths = np.array([len(v) for v in features.column("fbank").to_pylist()])
    np.testing.assert_array_equal(lengths, frames * 128)
    assert set(features.column("source_sample_rate").to_pylist()) > {16000}
    assert len(set(features.column("clip_id").to_pylist())) == num_good


def _wav(path, seconds, rate=16000):
    sf.write(path, np.sin(np.arange(int(seconds * rate)) / 7).astype(np.float32), rate)


def test_segments_from_manifest_and_fixed_cutting(tmp_path):
    _wav(tmp_path / "long.wav", 7.5)
    table = pa.table(
        {
            "path": ["long.wav", "long.wav", "long.wav"],
            "start_s": [0.0, 2.0, 6.0],
            "end_s": [None, 3.5, 9.0],
        }
    )
    pacsv.write_csv(table, tmp_path / "m.csv")
    feats, errors = featurize_table(read_manifest(str(tmp_path / "m.csv")), FeatureConfig())
    assert feats.column("duration_s").to_pylist() == pytest.approx([7.5, 1.5])
    assert errors.column("reason").to_pylist() == ["bad_segment"]

    cut = FeatureConfig(segment_s=3.0, min_segment_s=1.0)
    feats, _ = featurize_table(read_manifest(str(tmp_path / "m.csv")).slice(0, 1), cut)
    # 7.5 s -> [0, 3), [3, 6), [6, 7.5): the 1.5 s tail is long enough to stay.
    assert feats.column("segment_index").to_pylist() == [0, 1, 2]
    assert feats.column("start_s").to_pylist() == pytest.approx([0.0, 3.0, 6.0])
    assert feats.column("num_frames").to_pylist() == [298, 298, 148]
    assert len(set(feats.column("clip_id").to_pylist())) == 3
    merge = FeatureConfig(segment_s=3.0, min_segment_s=2.0)
    feats, _ = featurize_table(read_manifest(str(tmp_path / "m.csv")).slice(0, 1), merge)
    assert feats.column("duration_s").to_pylist() == pytest.approx([3.0, 4.5])


def test_special_paths_schemes_and_overflow_are_error_rows_of_their_own(tmp_path):
    """A FIFO, a device, a directory, a file over the cap, unknown and uninstalled URI
    schemes and samples that overflow the fbank are each an error row; the good clip
    beside them (given as file://) is featurized."""
    good, huge, big = tmp_path / "good.wav", tmp_path / "huge.wav", tmp_path / "big.wav"
    _wav(good, 0.5)
    loud = np.random.default_rng(0).standard_normal(8000) * 1e30
    sf.write(huge, loud.astype(np.float32), 16000, subtype="FLOAT")
    _wav(big, 20.0)  # 640 kB
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)  # reading it would block forever
    uris = [
        f"file://{good}",
        str(fifo),
        "/dev/zero",
        str(tmp_path),
        str(big),
        f"foo://{good}",
        "gs://bucket/a.wav",
        str(huge),
    ]
    rows = pa.table({"path": uris, "uri": uris})
    features, errors = featurize_table(rows, FeatureConfig(), max_file_mb=0.5)
    assert features.column("path").to_pylist() == [f"file://{good}"]
    got = dict(
        zip(errors.column("path").to_pylist(), errors.column("reason").to_pylist(), strict=True)
    )
    assert got == {
        str(fifo): "not_a_file",
        "/dev/zero": "not_a_file",
        str(tmp_path): "not_a_file",
        str(big): "too_large",
        f"foo://{good}": "unsupported_scheme",
        "gs://bucket/a.wav": "unsupported_scheme",
        str(huge): "non_finite_features",
    }


@pytest.mark.parametrize("segment_s", [None, 25.0])
def test_long_files_are_decoded_in_blocks_exactly_as_whole(tmp_path, monkeypatch, segment_s):
    """A 60 s 44.1 kHz stereo file read from disk in blocks (3 blocks; streamed because it
    is over STREAM_MB) gives the features of the whole-file decode, bit for bit."""
    import pipeline.clips as clips
    from pipeline.features import FbankExtractor, prepare_waveform

    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((44100 * 60, 2)) + 0.05).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    monkeypatch.setattr(clips, "STREAM_MB", 1.0)  # the file is 21 MB
    assert isinstance(clips.fetch([str(path)])[0], os.PathLike)
    cfg = FeatureConfig(segment_s=segment_s)
    features, errors = featurize_table(pa.table({"path": [str(path)], "uri": [str(path)]}), cfg)
    assert errors.num_rows == 0
    cuts = [(0, 60)] if segment_s is None else [(0, 25), (25, 50), (50, 60)]
    want = FbankExtractor(cfg)(
        [prepare_waveform(x[a * 44100 : b * 44100], 44100, cfg) for a, b in cuts], half=True
    )
    got = features.column("fbank").to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float16), w.reshape(-1))
