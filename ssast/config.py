"""Model configuration: sizes, patch geometry and the MSPM objective.

Names follow the paper; the mapping to the original code's arguments is:
``patch_shape = (fshape, tshape)``, ``patch_stride = (fstride, tstride)``,
``input_fdim``/``input_tdim`` unchanged, ``size`` = ``model_size`` without the
timm image-size suffix (``tiny224`` -> ``tiny``, ``base384_nokd`` -> ``base_nokd``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

Size = Literal["tiny", "small", "base", "base_nokd"]
MaskStrategy = Literal["auto", "cluster", "random"]
PosInit = Literal["trunc_normal", "sincos"]


@dataclass(frozen=True, kw_only=True)
class SizePreset:
    """Transformer width and depth of one DeiT size (timm 0.4.5 defaults)."""

    embed_dim: int
    """Token width E."""
    depth: int
    """Number of transformer blocks."""
    num_heads: int
    """Attention heads (head width is always 64)."""
    num_extra_tokens: int
    """Tokens before the patches: 2 (cls + dist) for distilled DeiT, 1 (cls) otherwise."""


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(embed_dim=192, depth=12, num_heads=3, num_extra_tokens=2),
    "small": SizePreset(embed_dim=384, depth=12, num_heads=6, num_extra_tokens=2),
    "base": SizePreset(embed_dim=768, depth=12, num_heads=12, num_extra_tokens=2),
    "base_nokd": SizePreset(embed_dim=768, depth=12, num_heads=12, num_extra_tokens=1),
}

GEOMETRIES: dict[str, tuple[int, int]] = {
    "patch": (16, 16),
    "frame": (128, 2),
}
"""Named patch shapes (freq, time) of the paper: 16x16 patches and 128x2 frames."""


def _pair(name: str, value: Any) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{name} must be a pair (freq, time) of ints, got {value!r}") from err
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a pair (freq, time) of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class SSASTConfig:
    """Architecture and pretext-task settings of one SSAST model.

    Defaults are the paper's tiny patch model at 128 mel bins x 1024 frames.
    """

    size: Size = "tiny"
    """Transformer size: tiny (6M), small (23M), base (89M) or base_nokd (base, cls token only)."""
    patch_shape: tuple[int, int] = (16, 16)
    """Patch size (freq bins, time frames): (16, 16) patch model, (128, 2) frame model."""
    patch_stride: tuple[int, int] = (16, 16)
    """Patch stride (freq, time). Pretraining needs stride == shape; fine-tuning may overlap."""
    input_fdim: int = 128
    """Mel bins F of the input."""
    input_tdim: int = 1024
    """Frames T of the input."""
    num_masked: int = 400
    """M, masked patches per clip in pretraining."""
    mask_strategy: MaskStrategy = "auto"
    """cluster (square blocks), random (uniform) or auto: cluster unless a patch spans all bins."""
    cluster_sizes: tuple[int, ...] = (3, 4, 5)
    """Block sides for cluster masking; one side is drawn uniformly per clip."""
    generative_weight: float = 10.0
    """lambda in loss = nce + lambda * mse."""
    pos_init: PosInit = "trunc_normal"
    """Initial patch positions: trunc_normal (the original's, std 0.02) or sincos (a 2-D
    sine-cosine table, as MAE's, learned from there). Only the start of training differs;
    checkpoints are the same either way."""

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        object.__setattr__(self, "patch_shape", _pair("patch_shape", self.patch_shape))
        object.__setattr__(self, "patch_stride", _pair("patch_stride", self.patch_stride))
        object.__setattr__(self, "cluster_sizes", tuple(int(c) for c in self.cluster_sizes))
        if self.patch_shape[0] > self.input_fdim or self.patch_shape[1] > self.input_tdim:
            raise ValueError(
                f"patch_shape {self.patch_shape} does not fit the input "
                f"(input_fdim={self.input_fdim}, input_tdim={self.input_tdim})"
            )
        if self.mask_strategy not in ("auto", "cluster", "random"):
            raise ValueError(
                f"mask_strategy must be auto, cluster or random, got {self.mask_strategy!r}"
            )
        if not self.cluster_sizes or min(self.cluster_sizes) < 1:
            raise ValueError(f"cluster_sizes must be positive ints, got {self.cluster_sizes}")
        if not 1 <= self.num_masked <= self.num_patches:
            raise ValueError(
                f"num_masked must be in [1, {self.num_patches}] (the number of patches), "
                f"got {self.num_masked}"
            )
        if self.pos_init not in get_args(PosInit):
            raise ValueError(
                f"pos_init must be one of {', '.join(get_args(PosInit))}, got {self.pos_init!r}"
            )
        if self.generative_weight < 0:
            raise ValueError(f"generative_weight must be >= 0, got {self.generative_weight}")

    @classmethod
    def from_geometry(cls, geometry: str, **kwargs: Any) -> SSASTConfig:
        """Config with the patch shape and stride of a named geometry ("patch" or "frame")."""
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, got {geometry!r}")
        shape = GEOMETRIES[geometry]
        return cls(patch_shape=shape, patch_stride=kwargs.pop("patch_stride", shape), **kwargs)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SSASTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown SSASTConfig keys {unknown}; valid keys are {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (safe for ``torch.load(weights_only=True)`` and YAML)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> SSASTConfig:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def preset(self) -> SizePreset:
        return SIZES[self.size]

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (f_dim, t_dim): floor((F - fshape) / fstride) + 1 per axis."""
        (fs, ts), (fst, tst) = self.patch_shape, self.patch_stride
        return (self.input_fdim - fs) // fst + 1, (self.input_tdim - ts) // tst + 1

    @property
    def num_patches(self) -> int:
        """N, patch tokens per clip."""
        f_dim, t_dim = self.grid
        return f_dim * t_dim

    @property
    def patch_dim(self) -> int:
        """P, values in one patch (fshape * tshape); the pretext heads predict P values."""
        return self.patch_shape[0] * self.patch_shape[1]

    @property
    def is_pretraining_geometry(self) -> bool:
        """True when patches do not overlap (stride == shape), as pretraining requires."""
        return self.patch_stride == self.patch_shape

    @property
    def resolved_mask_strategy(self) -> Literal["cluster", "random"]:
        """The original rule: cluster masking unless a patch spans all mel bins (frames)."""
        if self.mask_strategy != "auto":
            return self.mask_strategy
        return "random" if self.patch_shape[0] == self.input_fdim else "cluster"
