"""Fine-tuning model: the SSAST encoder, a pooling rule and a LayerNorm + Linear head.

Shapes: B batch, T frames, F mel bins, N patches, C extra tokens, D width, K classes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ssast.adapters import AdapterConfig, adapter_parameter_names, add_adapters, merge_lora
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
        adapter: parameter-efficient fine-tuning (:mod:`ssast.adapters`). With a LoRA or
            bottleneck adapter the encoder is frozen at construction and only the adapter and
            the head train (:meth:`freeze_for_adapter`); None or kind "none" trains everything.
    """

    def __init__(
        self,
        cfg: SSASTConfig,
        num_classes: int,
        pooling: Pooling = "mean",
        adapter: AdapterConfig | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if adapter is not None and not isinstance(adapter, AdapterConfig):
            raise TypeError(f"adapter must be an AdapterConfig or None, got {adapter!r}")
        self.cfg, self.num_classes, self.pooling = cfg, num_classes, pooling
        self.adapter = adapter or AdapterConfig()
        D = cfg.preset.embed_dim
        self.encoder = SpectrogramEncoder(cfg)
        # PyTorch default LayerNorm eps (1e-5) here, unlike the encoder's 1e-6: as original.
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, num_classes))
        # After the head, so encoder and head draw the same random init as without adapter.
        add_adapters(self.encoder, self.adapter)
        self.freeze_for_adapter()

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        num_classes: int,
        pooling: Pooling = "mean",
        adapter: AdapterConfig | None = None,
    ) -> SSASTClassifier:
        """A classifier whose encoder is a copy of ``model.encoder`` (an :class:`SSAST`).

        Adapt the pretrained model first (``model.adapted(patch_stride=..., input_tdim=...)``)
        when the fine-tuning geometry differs. Adapter parameters keep their identity init.
        """
        clf = cls(model.cfg, num_classes, pooling, adapter)
        missing, unexpected = clf.encoder.load_state_dict(model.encoder.state_dict(), strict=False)
        # The adapted encoder's keys are a superset of the plain ones: only adapters may miss.
        missing = set(missing) - adapter_parameter_names(clf.encoder)
        if missing or unexpected:
            raise ValueError(
                f"pretrained encoder does not fit: missing {sorted(missing)[:8]}, "
                f"unexpected {sorted(unexpected)[:8]}"
            )
        return clf.to(next(model.parameters()).device)

    def freeze_for_adapter(self) -> None:
        """With an adapter, train only its parameters and the head; kind none: no change."""
        if self.adapter.kind == "none":
            return
        keep = adapter_parameter_names(self.encoder)
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(name in keep)
        self.head.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (what the optimizer should get)."""
        return [p for p in self.parameters() if p.requires_grad]

    def merge_lora(self) -> None:
        """Fold a LoRA adapter into the encoder's weights, leaving a plain classifier.

        Logits are unchanged up to float rounding; the state dict then has the plain keys
        (exportable with ``classifier_to_original_state_dict``) and ``adapter`` is kind none.
        The encoder's weights stay frozen.
        """
        if self.adapter.kind != "lora":
            raise ValueError(f"merge_lora needs a LoRA adapter, this one is {self.adapter.kind!r}")
        merge_lora(self.encoder)  # ssast.adapters.merge_lora, not this method
        self.adapter = AdapterConfig()

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
