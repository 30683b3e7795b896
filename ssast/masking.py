"""Which patches to mask: cluster masking for patch models, uniform masking for frames.

Shapes: B batch, N patches, M masked patches, (f_dim, t_dim) the patch grid.
Both samplers are vectorised over the batch and draw from an explicit
``torch.Generator``, so a mask is reproducible from a seed.

Cluster masking differs from the original ``gen_maskid_patch`` on purpose
(reference section 3.1) and keeps its idea, square blocks of side 3 to 5:

* Blocks are real 2-D squares clipped at the grid edges. The original adds
  column offsets to a flat index, so a block near the last time column wraps
  into the next frequency row.
* Block corners are drawn so that every patch is equally likely to be covered:
  the top-left corner ranges over ``[-(c-1), f_dim-1] x [-(c-1), t_dim-1]``. The
  original draws corners on the grid only, which under-masks the lowest frequency
  rows (42 % instead of 78 % for row 0 at M=400) and never masks token 0.
* Exactly M distinct patches are kept in the order the blocks first covered them
  (ties inside a block broken at random), so the last block may be partial. The
  original keeps the M *smallest* indices of the union, which biases against the
  highest-frequency, latest patches.
"""

from __future__ import annotations

import math

import torch


def sample_random_mask(
    batch_size: int,
    num_patches: int,
    num_masked: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform masking (frame models): M distinct patches per clip, without replacement.

    Returns:
        (B, M) long, sorted ascending within each clip.
    """
    _check_counts(num_patches, num_masked)
    scores = torch.rand(batch_size, num_patches, generator=generator, device=device)  # (B, N)
    return scores.argsort(dim=1)[:, :num_masked].sort(dim=1).values  # (B, M)


def sample_cluster_mask(
    batch_size: int,
    grid: tuple[int, int],
    num_masked: int,
    cluster_sizes: tuple[int, ...] = (3, 4, 5),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cluster masking (patch models): square blocks until exactly M patches are covered.

    One block side c is drawn per clip from ``cluster_sizes``; a sequence of blocks with
    uniformly placed corners covers the grid; patches are ranked by the first block that
    covered them, and the first M are masked. Enough blocks are drawn that running out
    is negligible (below 1e-4 of the uncovered patches); if it happens the remaining
    slots go to uncovered patches at random, so the count is always exact.

    Args:
        batch_size: B.
        grid: (f_dim, t_dim).
        num_masked: M.
        cluster_sizes: candidate block sides.
        generator: random source.
        device: where to build the mask.

    Returns:
        (B, M) long patch indices (frequency-major), sorted ascending within each clip.
    """
    f_dim, t_dim = grid
    N = f_dim * t_dim
    _check_counts(N, num_masked)
    sides = torch.tensor(cluster_sizes, device=device)
    c_max = int(sides.max())
    num_blocks = _num_blocks(grid, num_masked, min(cluster_sizes))
    g = dict(generator=generator, device=device)

    side = sides[torch.randint(len(cluster_sizes), (batch_size,), **g)]  # (B,)
    span_f, span_t = (f_dim + side - 1).float(), (t_dim + side - 1).float()  # (B,)
    u = torch.rand(batch_size, num_blocks, 2, **g)  # (B, S, 2)
    top = (u[..., 0] * span_f[:, None]).long() - (side[:, None] - 1)  # (B, S), may be < 0
    left = (u[..., 1] * span_t[:, None]).long() - (side[:, None] - 1)  # (B, S)

    offs = torch.arange(c_max, device=device)
    rows = top[:, :, None, None] + offs[:, None]  # (B, S, c, 1)
    cols = left[:, :, None, None] + offs[None, :]  # (B, S, 1, c)
    inside = (
        (offs[:, None] < side[:, None, None, None])  # row offset < this clip's side
        & (offs[None, :] < side[:, None, None, None])  # col offset < side
        & (rows >= 0)
        & (rows < f_dim)
        & (cols >= 0)
        & (cols < t_dim)
    )  # (B, S, c, c)
    flat = (rows * t_dim + cols).masked_fill(~inside, N)  # (B, S, c, c); N = dropped
    order = torch.arange(num_blocks, device=device).view(1, -1, 1, 1).expand_as(flat)

    # First block that covered each patch; N+1 slots, the last collects dropped cells.
    first = torch.full((batch_size, N + 1), num_blocks, device=device, dtype=torch.long)
    first.scatter_reduce_(1, flat.reshape(batch_size, -1), order.reshape(batch_size, -1), "amin")
    rank = first[:, :N].float() + torch.rand(batch_size, N, **g)  # (B, N), ties at random
    return rank.argsort(dim=1)[:, :num_masked].sort(dim=1).values  # (B, M)


def mask_to_bool(mask_index: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, M) indices -> (B, N) bool, True where masked."""
    dense = torch.zeros(
        mask_index.shape[0], num_patches, dtype=torch.bool, device=mask_index.device
    )
    return dense.scatter_(1, mask_index, True)


def _num_blocks(grid: tuple[int, int], num_masked: int, side: int) -> int:
    """Blocks needed so that the expected shortfall of covered patches is tiny.

    A block of side c with corners uniform on the extended range covers a given patch
    with probability p = c^2 / ((f + c - 1)(t + c - 1)); after S blocks a patch is
    uncovered with probability (1 - p)^S. We want that below 1e-4 * (1 - M/N) + 1e-6
    (uncovered patches are a small share of those left unmasked).
    """
    f_dim, t_dim = grid
    N = f_dim * t_dim
    p = side * side / ((f_dim + side - 1) * (t_dim + side - 1))
    if p >= 1.0:
        return 1
    target = 1e-4 * (1.0 - num_masked / N) + 1e-6
    return max(1, math.ceil(math.log(target) / math.log1p(-p)))


def _check_counts(num_patches: int, num_masked: int) -> None:
    if not 1 <= num_masked <= num_patches:
        raise ValueError(f"num_masked must be in [1, num_patches={num_patches}], got {num_masked}")
