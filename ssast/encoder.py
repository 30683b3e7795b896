"""The SSAST encoder: patch embedding, cls/dist tokens, learned positions, DeiT blocks.

Shapes: B batch, T frames, F mel bins, N patches, C extra tokens (2: cls + dist, or
1: cls), D width. Parameter names equal the original's ``v.*`` keys (the timm ViT
SSAST wraps; :mod:`ssast.block` computes timm's block), e.g.
``blocks.0.attn.qkv.weight``; only the ``module.v.`` prefix and the unused timm
classifier heads differ (see :mod:`ssast.checkpoint`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from ssast.block import Block
from ssast.config import SSASTConfig
from ssast.patching import PatchEmbed, sincos_positions


class SpectrogramEncoder(nn.Module):
    """Pre-norm ViT on spectrogram patches (DeiT sizes, LayerNorm eps 1e-6, no dropout)."""

    def __init__(self, cfg: SSASTConfig) -> None:
        super().__init__()
        p = cfg.preset
        self.num_extra_tokens = p.num_extra_tokens
        self.grid = cfg.grid
        D = p.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_shape, cfg.patch_stride, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if p.num_extra_tokens == 2 else None
        self.pos_embed = nn.Parameter(torch.zeros(1, p.num_extra_tokens + cfg.num_patches, D))
        self.blocks = nn.Sequential(*(Block(D, p.num_heads, 4.0, 1e-6) for _ in range(p.depth)))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self._init_weights()
        if cfg.pos_init == "sincos":  # after the draws above: the rest of the init is unchanged
            with torch.no_grad():
                self.pos_embed[0, self.num_extra_tokens :] = sincos_positions(self.grid, D)

    def _init_weights(self) -> None:
        # timm 0.4.5 DeiT init (torch's trunc_normal_ draws exactly as timm's):
        # trunc-normal(0.02) for Linear weights and tokens, zero
        # biases, unit LayerNorms; the patch conv keeps PyTorch's default (SSAST swaps it in
        # after timm's init pass).
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for t in (self.cls_token, self.dist_token, self.pos_embed):
            if t is not None:
                trunc_normal_(t, std=0.02)

    @property
    def embed_dim(self) -> int:
        return self.cls_token.shape[-1]

    def extra_tokens(self, batch_size: int) -> torch.Tensor:
        """(B, C, D) cls (and dist) tokens."""
        tokens = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        # Expand before concatenating: each token's gradient is then a reduced, contiguous
        # tensor (DDP warns about strided gradient views otherwise).
        return torch.cat([t.expand(batch_size, -1, -1) for t in tokens], dim=1)

    def forward_tokens(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Run the transformer on embedded (possibly masked) patches.

        Args:
            patch_tokens: (B, N, D).

        Returns:
            (B, C + N, D) after the final LayerNorm; extra tokens first.
        """
        x = torch.cat([self.extra_tokens(patch_tokens.shape[0]), patch_tokens], dim=1)
        x = x + self.pos_embed  # (B, C + N, D)
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrograms -> (B, C + N, D) encoded tokens."""
        return self.forward_tokens(self.patch_embed(x))

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, F) spectrograms -> the (B, C + N, D) tokens after each block; the last
        after the final LayerNorm (equal to :meth:`forward`)."""
        patches = self.patch_embed(x)
        h = torch.cat([self.extra_tokens(patches.shape[0]), patches], dim=1) + self.pos_embed
        out = []
        for block in self.blocks:
            h = block(h)
            out.append(h)
        out[-1] = self.norm(h)
        return out
