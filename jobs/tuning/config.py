"""Configuration of a Ray Tune sweep over fine-tuning: a fine-tuning config (any recipe
YAML loads here) plus a ``tune`` section with the search space and the scheduler."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from jobs.finetuning.config import FinetuneConfig

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")


def _default_space() -> dict[str, dict[str, list]]:
    return {
        "optim.lr": {"loguniform": [1e-4, 3e-3]},
        "optim.head_lr_mult": {"choice": [1.0, 10.0]},
        "train.batch_size": {"choice": [8, 16]},
        "augment.mixup": {"uniform": [0.0, 0.5]},
        "augment.freq_mask": {"choice": [0, 24, 48]},
        "augment.time_mask": {"choice": [0, 48, 96]},
        "model.pooling": {"choice": ["mean", "cls"]},
        "optim.layer_decay": {"choice": [1.0, 0.75]},
    }


@dataclass(frozen=True, kw_only=True)
class TuneSection:
    num_samples: int = 8
    """Trials (configurations drawn from the search space)."""
    search_space: dict[str, dict[str, list]] = field(default_factory=_default_space)
    """Dotted fine-tuning key -> {distribution: arguments}; distributions: loguniform
    [low, high], uniform [low, high], choice [values...], randint [low, high)."""
    search: str = "random"
    """Search algorithm: random (Tune's BasicVariantGenerator; needs no extra service)."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: keep the top 1/reduction_factor at each rung."""
    max_concurrent_trials: int | None = None
    """Trials at once. None: as many as the cluster's CPUs (GPUs) hold, counting each
    trial's driver and its Ray Train workers."""
    trial_driver_cpus: float = 0.1
    """CPUs of each trial's driver (it only launches and watches the trial's Ray Train
    workers; the sweep reads and prepares the data once, before the trials)."""
    max_failures: int = 1
    """Retries of a failed trial."""
    registered_model: str = "ssast-tuned"
    """Registry name of the best trial's classifier."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"tune.num_samples must be >= 1, got {self.num_samples}")
        if self.search != "random":
            raise ValueError(f"tune.search must be 'random', got {self.search!r}")
        for key, spec in self.search_space.items():
            if (
                not isinstance(spec, dict)
                or len(spec) != 1
                or next(iter(spec)) not in DISTRIBUTIONS
            ):
                raise ValueError(
                    f"tune.search_space.{key} must be one of {{dist: args}} with "
                    f"dist in {DISTRIBUTIONS}, got {spec!r}"
                )
            ((dist, args),) = spec.items()
            if dist != "choice" and (len(args) != 2 or not args[0] < args[1]):
                raise ValueError(
                    f"tune.search_space.{key}: {dist} needs [low, high] with "
                    f"low < high, got {args!r}"
                )
            if dist == "loguniform" and not args[0] > 0:
                raise ValueError(f"tune.search_space.{key}: loguniform needs low > 0")
            if key.startswith("data."):
                raise ValueError(
                    f"tune.search_space.{key}: the data section is fixed for a "
                    "sweep (every trial must see the same splits)"
                )
            if key == "model.input_tdim" and dist != "choice":
                raise ValueError(
                    "tune.search_space.model.input_tdim must be a choice list: "
                    "the sweep prepares each length's data once, up front"
                )


@dataclass(frozen=True, kw_only=True)
class TuneJobConfig(FinetuneConfig):
    tune: TuneSection = field(default_factory=TuneSection)
    name: str = "sweep"
    """Sweep name: the same name under the same --output restores an interrupted sweep."""


def sample_space(space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """The search space as Ray Tune distributions."""
    from ray import tune

    make = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "choice": lambda a: tune.choice(list(a)),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: make[dist](args) for key, spec in space.items() for dist, args in spec.items()}


def corners(space: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    """The lowest and highest value of every key: configs that must validate up front."""
    low = {
        k: min(a) if d == "choice" and _numeric(a) else a[0]
        for k, s in space.items()
        for d, a in s.items()
    }
    high = {
        k: max(a)
        if d == "choice" and _numeric(a)
        else (a[-1] if d == "choice" else a[1] - (d == "randint"))
        for k, s in space.items()
        for d, a in s.items()
    }
    return [low, high]


def _numeric(values: list) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
