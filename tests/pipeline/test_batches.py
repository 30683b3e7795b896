"""Pad/crop and normalisation of stored rows into model input."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.batches import fixed_length, to_model_input, to_windows
from pipeline.normalization import Normalization


def rows(lengths, F=3, seed=0):
    rng = np.random.default_rng(seed)
    mats = [rng.standard_normal((m, F)).astype(np.float16) for m in lengths]
    table = pa.table(
        {
            "fbank": pa.array([m.reshape(-1) for m in mats], pa.list_(pa.float16())),
            "num_frames": pa.array(lengths, pa.int32()),
            "num_mel_bins": pa.array([F] * len(lengths), pa.int16()),
        }
    )
    return table, mats


def test_fixed_length_pads_at_the_end_and_keeps_the_first_frames():
    table, mats = rows([2, 5, 4])
    out = fixed_length(table.column("fbank"), table.column("num_frames").to_numpy(), 3, 4)
    for got, m in zip(out, mats, strict=True):  # test-side loop: naive reference
        want = np.zeros((4, 3), np.float32)
        n = min(len(m), 4)
        want[:n] = m[:n]
        np.testing.assert_array_equal(got, want)


def test_an_empty_batch_gives_empty_input_and_windows():
    """A batch whose rows all failed upstream (zero rows) is an empty array, not an error."""
    table, _ = rows([])
    norm = Normalization(0.0, 1.0)
    assert to_model_input(table, 4, norm).shape == (0, 4, 128)
    assert to_windows(table, 4, 2, norm).fbank.shape == (0, 4, 128)


def test_normalisation_matches_the_original_formula():
    table, mats = rows([3])
    out = to_model_input(table, 5, Normalization(mean=-4.0, std=2.0))[0]
    np.testing.assert_allclose(out[:3], (mats[0].astype(np.float32) + 4.0) / 4.0, rtol=1e-6)
    np.testing.assert_allclose(out[3:], 1.0)  # padding 0 -> -mean / (2 std)
    with pytest.raises(ValueError, match="std"):
        Normalization(mean=0.0, std=0.0)


def test_auto_length_is_the_95th_percentile_in_whole_patches():
    from pipeline.batches import auto_target_frames

    frames = np.arange(1, 101)  # 95th percentile: 95.05 frames
    assert auto_target_frames(frames) == 96
    assert auto_target_frames(frames, multiple=2) == 96
    assert auto_target_frames(np.array([998] * 20)) == 1008  # a 10 s clip: 63 patches
    assert auto_target_frames(np.array([3])) == 16  # at least one patch


def test_clip_mean_removes_each_clips_gain_per_mel_bin():
    """With clip_mean a fixed gain per mel bin (a level or a filter: a constant in the log
    domain) changes nothing; the mean is over the whole clip even when the input is a cut
    or a window of it; padding is 0; the setting travels with a model's statistics."""
    from pipeline.batches import to_windows
    from pipeline.normalization import choose_normalization

    table, mats = rows([6, 3], F=4)
    gain = np.array([1.0, -2.0, 0.5, 3.0], np.float16)
    shifted = pa.table(
        {
            "fbank": pa.array([(m + gain).reshape(-1) for m in mats], pa.list_(pa.float16())),
            "num_frames": table.column("num_frames"),
            "num_mel_bins": table.column("num_mel_bins"),
        }
    )
    norm = Normalization(mean=-4.0, std=2.0, clip_mean=True)
    out = to_model_input(table, 4, norm)
    np.testing.assert_allclose(to_model_input(shifted, 4, norm), out, atol=2e-3)  # float16
    clip0 = mats[0].astype(np.float32)  # 6 frames, cut to 4: the mean is of all 6
    np.testing.assert_allclose(out[0], (clip0[:4] - clip0.mean(axis=0)) / 4.0, rtol=1e-5)
    np.testing.assert_array_equal(out[1, 3:], 0.0)
    assert norm.fill == 0.0
    windows = to_windows(table, 4, 2, norm)  # clip 0: windows at 0 and 2
    np.testing.assert_allclose(windows.fbank[1], (clip0[2:6] - clip0.mean(axis=0)) / 4.0, rtol=1e-5)
    plain = to_model_input(table, 4, Normalization(mean=-4.0, std=2.0))
    assert not np.allclose(to_model_input(shifted, 4, Normalization(-4.0, 2.0)), plain)

    assert Normalization.from_dict(norm.to_dict()) == norm
    assert Normalization.from_dict({"mean": 1.0, "std": 2.0}).clip_mean is False  # older files
    assert choose_normalization("audioset", model=norm).clip_mean  # how the model reads input
