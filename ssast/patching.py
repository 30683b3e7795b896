"""Patches of a spectrogram: the pretext targets, the patch embedding, position tables.

Shapes: B batch, T frames, F mel bins, N patches, P values per patch, D width,
(f_dim, t_dim) the patch grid. Frequency is the image height, time the width, and
tokens are frequency-major: token n = f_idx * t_dim + t_idx (as ``nn.Unfold``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patchify(
    x: torch.Tensor, patch_shape: tuple[int, int], patch_stride: tuple[int, int]
) -> torch.Tensor:
    """Cut a batch of spectrograms into flattened patches, in ``nn.Unfold`` order.

    Args:
        x: (B, T, F) spectrograms.
        patch_shape: (fshape, tshape).
        patch_stride: (fstride, tstride).

    Returns:
        (B, N, P) patches, P = fshape * tshape, value index kf * tshape + kt.
    """
    (fs, ts), (fst, tst) = patch_shape, patch_stride
    B, T, Fq = x.shape
    f_dim, t_dim = (Fq - fs) // fst + 1, (T - ts) // tst + 1
    if (fs, ts) != (fst, tst):
        image = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        return F.unfold(image, (fs, ts), stride=(fst, tst)).transpose(1, 2)  # (B, N, P)
    # Non-overlapping patches are a pure reshape: no copy through unfold's im2col.
    image = x[:, : t_dim * ts, : f_dim * fs].transpose(1, 2)  # (B, F', T')
    grid = image.reshape(B, f_dim, fs, t_dim, ts).permute(0, 1, 3, 2, 4)  # (B, f, t, fs, ts)
    return grid.reshape(B, f_dim * t_dim, fs * ts)  # (B, N, P)


def sincos_positions(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """A 2-D sine-cosine position table (as MAE's), frequency-major like the tokens.

    The first half of the width encodes the frequency index, the second half the time
    index, each as [sin(i w_k), cos(i w_k)] with w_k = 10000^(-k / (dim / 4)).

    Returns:
        (f_dim * t_dim, dim) float32, values in [-1, 1].
    """
    if dim % 4:
        raise ValueError(f"sincos positions need a width divisible by 4, got {dim}")
    f_dim, t_dim = grid
    omega = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def axis(n: int) -> torch.Tensor:  # (n, dim / 2)
        angle = torch.arange(n, dtype=torch.float64)[:, None] * omega
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    f = axis(f_dim).repeat_interleave(t_dim, dim=0)  # token n -> n // t_dim
    t = axis(t_dim).repeat(f_dim, 1)  # token n -> n % t_dim
    return torch.cat([f, t], dim=1).float()


class PatchEmbed(nn.Module):
    """Single-channel patch projection: a Conv2d (kernel = patch shape) over (B, 1, F, T).

    The parameter is named ``proj`` as in timm, so keys read ``patch_embed.proj.weight``.
    """

    def __init__(
        self, patch_shape: tuple[int, int], patch_stride: tuple[int, int], embed_dim: int
    ) -> None:
        super().__init__()
        self.patch_shape = tuple(patch_shape)
        self.patch_stride = tuple(patch_stride)
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_shape, stride=patch_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrograms -> (B, N, D) patch embeddings."""
        image = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        return self.proj(image).flatten(2).transpose(1, 2)  # (B, N, D)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Embed already-cut patches, (B, N, P) -> (B, N, D).

        Equal to :meth:`forward` on the spectrogram (the conv is a matmul on unfolded
        patches with the same flatten order), so pretraining cuts the patches once and
        uses them both as targets and as encoder input.
        """
        weight = self.proj.weight.flatten(1)  # (D, P)
        return F.linear(patches, weight, self.proj.bias)  # (B, N, D)


def adapt_pos_embed(
    pos_embed: torch.Tensor,
    num_extra_tokens: int,
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
) -> torch.Tensor:
    """Crop or resize a positional table to a new patch grid, as the original fine-tuning does.

    The extra-token rows (cls, dist) are kept. The patch rows, seen as a (D, f, t) image,
    are centre-cropped in time when the new grid is narrower and resized bilinearly
    (align_corners False) when it is wider; then the same in frequency. Two deliberate
    fixes of the original (section 8.2 of the reference): the frequency crop uses the
    frequency size (the original slices with t and crashes), and the time resize keeps
    the source's frequency rows (the original hard-codes 8, equal for 128-bin 16x16).

    Args:
        pos_embed: (1, C + f_src * t_src, D).
        num_extra_tokens: C.
        src_grid: (f_src, t_src) of ``pos_embed``.
        dst_grid: (f_dst, t_dst) wanted.

    Returns:
        (1, C + f_dst * t_dst, D), a new tensor.
    """
    (pf, pt), (f, t) = src_grid, dst_grid
    C, D = num_extra_tokens, pos_embed.shape[-1]
    if pos_embed.shape[1] != C + pf * pt:
        raise ValueError(
            f"pos_embed has {pos_embed.shape[1]} rows, expected {C} extra + {pf}x{pt} grid"
        )
    extra = pos_embed[:, :C]  # (1, C, D)
    image = pos_embed[:, C:].transpose(1, 2).reshape(1, D, pf, pt)  # (1, D, pf, pt)
    if t < pt:
        start = pt // 2 - t // 2
        image = image[:, :, :, start : start + t]  # (1, D, pf, t)
    elif t > pt:
        image = F.interpolate(image, size=(pf, t), mode="bilinear", align_corners=False)
    if f < pf:
        start = pf // 2 - f // 2
        image = image[:, :, start : start + f, :]  # (1, D, f, t)
    elif f > pf:
        image = F.interpolate(image, size=(f, t), mode="bilinear", align_corners=False)
    patches = image.reshape(1, D, f * t).transpose(1, 2)  # (1, f*t, D)
    return torch.cat([extra, patches], dim=1).contiguous()
