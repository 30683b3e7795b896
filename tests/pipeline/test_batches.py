"""Pad/crop and normalisation of stored rows into model input."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.batches import fixed_length, to_model_input
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
