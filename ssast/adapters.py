"""Parameter-efficient fine-tuning: LoRA and bottleneck adapters on the encoder's blocks.

Shapes: B batch, L tokens, D width, r adapter rank. Both kinds are added in place by
swapping a block's ``nn.Linear`` for a subclass that keeps ``weight`` and ``bias``, so every
plain parameter keeps its name (``blocks.0.attn.qkv.weight``): released and pretrained weights
load unchanged and an adapted state dict is a superset of the plain one. New parameters:

==============  ================================================================
kind            added per block i
==============  ================================================================
``lora``        ``blocks.i.attn.qkv.lora_{a,b}``, ``blocks.i.attn.proj.lora_{a,b}``
``bottleneck``  ``blocks.i.mlp.fc2.adapter.{down,up}.{weight,bias}``
==============  ================================================================

Both start as the identity (LoRA's B and the bottleneck's up-projection are zero), so an
adapted model computes exactly what the plain one does until it is trained.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssast.encoder import SpectrogramEncoder

AdapterKind = Literal["none", "lora", "bottleneck"]
_KINDS = ("none", "lora", "bottleneck")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """Which adapter a classifier fine-tunes (the rest of the encoder stays frozen)."""

    kind: AdapterKind = "none"
    """none (full fine-tuning), lora (attention qkv + proj) or bottleneck (after each MLP)."""
    rank: int = 8
    """r: LoRA rank, or the bottleneck's hidden width."""
    alpha: float | None = None
    """LoRA scale numerator: the update is (alpha / r) B A x; None means alpha = r (scale 1)."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {list(_KINDS)}, got {self.kind!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 or None (= rank), got {self.alpha!r}")

    @property
    def scale(self) -> float:
        """LoRA's alpha / r."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown AdapterConfig keys {unknown}; valid keys are {sorted(names)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (safe for ``torch.load(weights_only=True)`` and YAML)."""
        return dataclasses.asdict(self)


class LoRALinear(nn.Linear):
    """``W x + b + scale * B A x`` (Hu et al. 2021) with W, b frozen by the caller.

    Attributes:
        lora_a: (r, in) A, Kaiming-uniform as in the reference implementation.
        lora_b: (out, r) B, zeros, so the layer starts as the wrapped one.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        dd = {"device": base.weight.device, "dtype": base.weight.dtype}
        # Built on the meta device, then handed the base layer's parameters: no copy and
        # no draw from the global RNG for a weight that is thrown away.
        super().__init__(base.in_features, base.out_features, base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.scale = scale
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **dd))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **dd))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)  # (..., r) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merge(self) -> nn.Linear:
        """Fold ``scale * B A`` into W and return a plain ``nn.Linear`` on the same W, b.

        B is zeroed, so this layer still computes the same function afterwards.
        """
        with torch.no_grad():
            self.weight += self.scale * (self.lora_b @ self.lora_a)  # (out, in)
            self.lora_b.zero_()
        plain = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain


class Bottleneck(nn.Module):
    """Residual bottleneck ``h + up(gelu(down(h)))`` (Houlsby et al. 2019), identity at init.

    ``down`` is D -> r (PyTorch default init), ``up`` is r -> D (zeros, weight and bias).
    """

    def __init__(self, dim: int, rank: int, device=None, dtype=None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, device=device, dtype=dtype)
        self.up = nn.Linear(rank, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return h + self.up(F.gelu(self.down(h)))


class BottleneckLinear(nn.Linear):
    """A linear layer followed by a :class:`Bottleneck` (``adapter``).

    Put on a block's ``mlp.fc2``, this is the sequential adapter after the feed-forward
    sublayer, before the residual sum (the encoder's MLP has no dropout after ``fc2``).
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        dd = {"device": base.weight.device, "dtype": base.weight.dtype}
        super().__init__(base.in_features, base.out_features, base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # as in LoRALinear: no copy, no RNG
        self.adapter = Bottleneck(base.out_features, rank, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        return self.adapter(F.linear(x, self.weight, self.bias))


_ADAPTED = (LoRALinear, BottleneckLinear)


def add_adapters(encoder: SpectrogramEncoder, cfg: AdapterConfig) -> None:
    """Add ``cfg``'s adapter to every block of ``encoder``, in place (kind none: no-op).

    Only adds parameters; freezing the rest is the caller's choice (see
    :func:`adapter_parameter_names` and ``SSASTClassifier.freeze_for_adapter``).
    """
    if cfg.kind == "none":
        return
    if adapter_parameter_names(encoder):
        raise ValueError("encoder already has adapters; add them to a plain encoder only")
    for block in encoder.blocks:
        if cfg.kind == "lora":
            block.attn.qkv = LoRALinear(block.attn.qkv, cfg.rank, cfg.scale)
            block.attn.proj = LoRALinear(block.attn.proj, cfg.rank, cfg.scale)
        else:
            block.mlp.fc2 = BottleneckLinear(block.mlp.fc2, cfg.rank)


def adapter_parameter_names(module: nn.Module) -> set[str]:
    """Names (as in ``module.named_parameters()``) of the parameters adapters added."""
    names = set()
    for prefix, m in module.named_modules():
        if isinstance(m, _ADAPTED):
            pre = f"{prefix}." if prefix else ""
            names |= {pre + n for n, _ in m.named_parameters() if n not in ("weight", "bias")}
    return names


def merge_lora(module: nn.Module) -> int:
    """Fold every :class:`LoRALinear` below ``module`` into a plain ``nn.Linear``, in place.

    The result has the plain model's state-dict keys (for export to the original layout).
    Returns the number of layers merged. Bottleneck adapters cannot be merged (GELU).
    """
    targets = [(n, m) for n, m in module.named_modules() if n and isinstance(m, LoRALinear)]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name), child, m.merge())
    return len(targets)
