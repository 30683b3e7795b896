"""Normalisation of log-mel features: one object from where it is decided to where it is
applied, and one rule that decides it.

Model input is ``(x - mean) / (2 * std)`` (the original SSAST loader). The statistics are
a featurized dataset's own (``dataset.json``), those a model was trained with (saved in
its checkpoint), or a named preset of the original repositories. With ``clip_mean``, each
clip's own mean log-mel per mel bin replaces ``mean`` (cepstral mean normalisation): a
recording's fixed gain per frequency (its level, microphone, a low-pass) cancels out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PRESETS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}
"""(mean, std) of the original repositories, for comparison with published recipes."""

FALLBACK = "audioset"
"""The preset used when the statistics asked for do not exist."""

CHOICES = ("model", "dataset", *PRESETS)
"""What a config may name: the model's statistics, the dataset's, or a preset."""


@dataclass(frozen=True)
class Normalization:
    """Statistics of the log-mel features; model input = (x - mean) / (2 * std), or with
    ``clip_mean`` (x - the clip's mean per mel bin) / (2 * std)."""

    mean: float
    std: float
    clip_mean: bool = False
    """Subtract each clip's own mean per mel bin (over all its frames) instead of ``mean``;
    padding is then 0. How a model reads its input: it travels with the model."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std)):
            raise ValueError(
                f"normalization mean and std must be finite, got {self.mean}, {self.std}"
            )
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    @property
    def fill(self) -> float:
        """What a raw zero (padding, a SpecAugment mask) becomes after normalisation (with
        clip_mean: 0, the clip's mean)."""
        return 0.0 if self.clip_mean else (0.0 - self.mean) / (2 * self.std)

    def apply(
        self, x: np.ndarray, frames: np.ndarray, clip_means: np.ndarray | None = None
    ) -> np.ndarray:
        """Normalise (B, T, F) raw log-mel in place and return it.

        Args:
            x: zero after each row's real frames (padding).
            frames: (B,) real frames of each row.
            clip_means: (B, F) each clip's mean over all its frames (with clip_mean; when
                ``x`` holds a cut or a window of the clip). None: the mean of ``x``'s own
                real frames.
        """
        if self.clip_mean:
            frames = np.asarray(frames, np.int64)
            if clip_means is None:
                clip_means = x.sum(axis=1) / np.maximum(frames, 1)[:, None]
            x -= clip_means[:, None, :].astype(x.dtype)
            x[np.arange(x.shape[1])[None, :] >= frames[:, None]] = 0.0  # padding
        else:
            x -= self.mean
        x /= 2.0 * self.std
        return x

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(float(d["mean"]), float(d["std"]), bool(d.get("clip_mean", False)))

    @classmethod
    def preset(cls, name: str) -> Normalization:
        if name not in PRESETS:
            raise ValueError(f"unknown normalization preset {name!r}; one of {sorted(PRESETS)}")
        return cls(*PRESETS[name])


def check_choice(choice: str, key: str = "normalization") -> None:
    """ValueError unless ``choice`` is model, dataset or a preset name."""
    if choice not in CHOICES:
        raise ValueError(f"{key} must be one of {list(CHOICES)}, got {choice!r}")


def choose_normalization(
    choice: str, *, model: Normalization | None = None, dataset: Normalization | None = None
) -> Normalization:
    """The one rule: the statistics ``choice`` names when they exist, else the next ones.

    ``model``: a model's own statistics first, then the dataset's; ``dataset``: the
    dataset's; a preset name: that preset. When the named statistics do not exist (a
    released checkpoint carries none; audio streamed from a manifest has none) it falls
    back along model -> dataset -> the AudioSet preset, with a warning. A model's
    ``clip_mean`` carries over whatever statistics are chosen (it is how the model reads
    its input).
    """
    chosen = _choose(choice, model, dataset)
    if model is not None and model.clip_mean != chosen.clip_mean:
        return Normalization(chosen.mean, chosen.std, model.clip_mean)
    return chosen


def _choose(choice: str, model: Normalization | None, dataset: Normalization | None):
    check_choice(choice)
    if choice in PRESETS:
        return Normalization.preset(choice)
    order = (
        [("model", model), ("dataset", dataset)] if choice == "model" else [("dataset", dataset)]
    )
    for name, found in order:
        if found is not None:
            if name != choice:
                logger.warning(
                    "normalization=%s: the model carries no statistics; using the "
                    "dataset's (mean %.4f, std %.4f)",
                    choice,
                    found.mean,
                    found.std,
                )
            return found
    logger.warning(
        "normalization=%s: no %s statistics here; using the %s preset (set "
        "normalization to a preset to choose another)",
        choice,
        " or ".join(n for n, _ in order),
        FALLBACK,
    )
    return Normalization.preset(FALLBACK)
