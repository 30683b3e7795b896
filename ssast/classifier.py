"""Fine-tuning model: the SSAST encoder, a pooling rule and a LayerNorm + Linear head.

Shapes: B batch, T frames, F mel bins, N patches, C extra tokens, D width, K classes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ssast.config import SSASTConfig
from ssast.encoder import SpectrogramEncoder

Pooling = Literal["mean", "cls"]


class SSASTClassifier(nn.Module):
    """Clip classifier on an SSAST encoder (the original's ``ft_avgtok`` / ``ft_cls``).

    Args:
        cfg: encoder geometry (patch stride may overlap; input size is the fine-tuning one).
        num_classes: K.
        pooling: "mean" of the patch tokens (the SSAST default) or "cls" (mean of the
            cls and dist outputs; the cls output alone for base_nokd).
    """

    def __init__(self, cfg: SSASTConfig, num_classes: int, pooling: Pooling = "mean") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.cfg, self.num_classes, self.pooling = cfg, num_classes, pooling
        D = cfg.preset.embed_dim
        self.encoder = SpectrogramEncoder(cfg)
        # PyTorch default LayerNorm eps (1e-5) here, unlike the encoder's 1e-6: as original.
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, num_classes))

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, num_classes: int, pooling: Pooling = "mean"
    ) -> SSASTClassifier:
        """A classifier whose encoder is a copy of ``model.encoder`` (an :class:`SSAST`).

        Adapt the pretrained model first (``model.adapted(patch_stride=..., input_tdim=...)``)
        when the fine-tuning geometry differs.
        """
        clf = cls(model.cfg, num_classes, pooling)
        clf.encoder.load_state_dict(model.encoder.state_dict())
        return clf.to(next(model.parameters()).device)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C + N, D) encoded tokens -> (B, D) clip vectors."""
        C = self.encoder.num_extra_tokens
        if self.pooling == "mean":
            return tokens[:, C:].mean(dim=1)
        return tokens[:, :C].mean(dim=1)

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, D) pooled clip embeddings (before the head)."""
        want = (self.cfg.input_tdim, self.cfg.input_fdim)
        if fbank.dim() != 3 or tuple(fbank.shape[1:]) != want:
            raise ValueError(
                f"fbank must be (batch, {want[0]} frames, {want[1]} mel bins), got "
                f"{tuple(fbank.shape)}"
            )
        return self.pool(self.encoder(fbank))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, K) logits."""
        return self.head(self.embed(fbank))
