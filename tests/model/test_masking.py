"""Masking: exact counts, cluster shapes, unbiased coverage, determinism."""

import pytest
import torch

from ssast import SSAST, SSASTConfig, sample_cluster_mask, sample_random_mask
from ssast.masking import mask_to_bool


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("num_masked", [1, 100, 250, 400, 512])
def test_cluster_mask_has_exactly_m_distinct_indices(num_masked):
    mask = sample_cluster_mask(64, (8, 64), num_masked, generator=_gen(0))
    assert mask.shape == (64, num_masked) and mask.dtype == torch.long
    assert int(mask.min()) >= 0 and int(mask.max()) < 512
    for row in mask:  # test-side check only
        assert row.unique().numel() == num_masked


def test_random_mask_has_exactly_m_distinct_indices_and_can_mask_token_zero():
    mask = sample_random_mask(256, 512, 400, generator=_gen(0))
    assert all(row.unique().numel() == 400 for row in mask)
    assert bool((mask == 0).any())


def test_masks_are_deterministic_under_a_generator():
    a = sample_cluster_mask(8, (8, 64), 400, generator=_gen(7))
    b = sample_cluster_mask(8, (8, 64), 400, generator=_gen(7))
    c = sample_cluster_mask(8, (8, 64), 400, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(
        sample_random_mask(4, 512, 9, generator=_gen(3)),
        sample_random_mask(4, 512, 9, generator=_gen(3)),
    )


def _is_square(cells: torch.Tensor, t_dim: int, side: int) -> bool:
    rows, cols = cells // t_dim, cells % t_dim
    return (
        cells.numel() == side * side
        and int(rows.max() - rows.min()) == side - 1
        and int(cols.max() - cols.min()) == side - 1
    )


@pytest.mark.parametrize("side", [3, 4, 5])
def test_one_block_of_mask_is_a_square_without_row_wrap(side):
    # With M = side^2, a clip whose first block lies inside the grid is masked by exactly
    # that square. A flat-index block (the original) would wrap rows near the last column.
    masks = sample_cluster_mask(
        400, (8, 64), side * side, cluster_sizes=(side,), generator=_gen(side)
    )
    squares = sum(_is_square(m, 64, side) for m in masks)
    inside = (8 - side + 1) * (64 - side + 1) / ((8 + side - 1) * (64 + side - 1))
    assert squares / 400 > inside - 0.1
    # Blocks are clustered: far fewer distinct rows+cols than for uniform masks.
    spread = sum(len(set((m // 64).tolist())) for m in masks) / 400
    assert spread < side + 1.5


def test_cluster_masking_covers_all_frequency_rows_evenly():
    # The original masks row 0 at 42 % and row 4 at 89 % for M=400 (reference 3.1).
    mask = sample_cluster_mask(2000, (8, 64), 400, generator=_gen(1))
    dense = mask_to_bool(mask, 512).float().view(2000, 8, 64)
    per_row = dense.mean(dim=(0, 2))
    assert torch.allclose(per_row, torch.full((8,), 400 / 512), atol=0.04), per_row
    assert dense[:, 0, 0].mean() > 0.6  # token 0 is maskable


def test_model_picks_cluster_for_patches_and_random_for_frames():
    patch = SSAST(SSASTConfig(size="tiny", input_tdim=64, num_masked=9))
    frame = SSAST(SSASTConfig.from_geometry("frame", size="tiny", input_tdim=64, num_masked=9))
    assert patch.cfg.resolved_mask_strategy == "cluster"
    assert frame.cfg.resolved_mask_strategy == "random"
    assert frame.sample_mask(5, generator=_gen(0)).shape == (5, 9)


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="num_masked"):
        sample_cluster_mask(2, (8, 64), 513)
    with pytest.raises(ValueError, match="num_masked"):
        sample_random_mask(2, 10, 0)
