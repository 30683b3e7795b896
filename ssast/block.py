"""The pre-norm transformer block of the SSAST encoder (DeiT / timm ViT ``Block``).

Same computation and parameter names as ``timm.models.vision_transformer.Block`` with the
settings SSAST uses (qkv bias, MLP ratio 4, exact GELU, no dropout, no layer scale, no
stochastic depth), so released checkpoints load unchanged (``blocks.i.attn.qkv.weight``,
``blocks.i.mlp.fc1.bias``, ...). A test holds it equal to timm's block, bit for bit.

Why not timm's class: importing ``timm.layers`` imports torchvision, which imports
``torch._dynamo``, about 1.5 s of CPU in every process that builds a model (drivers,
Ray Train workers, prediction actors), where this module costs nothing beyond torch.

Shapes: B batch, L tokens, D width, H heads, hd = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (scaled dot product)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        B, L, D = x.shape
        H = self.num_heads
        qkv = self.qkv(x).reshape(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.proj(x.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(x)); LayerNorm eps 1e-6 as in DeiT."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
