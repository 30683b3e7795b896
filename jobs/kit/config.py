"""One way to configure a job: a YAML file plus dotted ``key=value`` overrides, and the
config sections every training job shares (scaling, MLflow, optimizer).

Configs are nested frozen dataclasses. ``load_config(Cls, path, ["train.lr=3e-4"])``
merges defaults <- YAML <- overrides, converts values to the field types, validates
through each dataclass's ``__post_init__``, and rejects unknown keys with the closest
valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Build ``cls`` from defaults, an optional YAML file and ``a.b=value`` overrides.

    Raises:
        ValueError: unknown key (with a suggestion), a value of the wrong type, or a
            dataclass validation error.
    """
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded)}")
        values = loaded
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw))
    return build(cls, values, where=str(path) if path else "config")


def build(cls: type[T], values: dict[str, Any], where: str = "config", prefix: str = "") -> T:
    """Instantiate a (nested) dataclass from a plain dict, strictly."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ValueError(
                f"{where}: unknown key {prefix}{key}{hint} "
                f"(valid: {', '.join(prefix + f for f in fields)})"
            )
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}", where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # a __post_init__ check: name the section
        message = str(err)
        if prefix and not message.startswith(prefix):
            named = message.split(" ", 1)[0] in {f.name for f in dataclasses.fields(cls)}
            message = prefix + message if named else f"{prefix[:-1]}: {message}"
        raise ValueError(f"{where}: {message}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of builtins (tuples as lists), for YAML, MLflow and JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be a section (mapping), got {_show(value)}")
        return build(tp, value, where, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, where) if len(inner) == 1 else value
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {key} must be one of {list(args)}, got {_show(value)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be a mapping, got {_show(value)}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: {key} must be a list, got {_show(value)}")
        if args and args[-1] is not Ellipsis:  # fixed arity, e.g. tuple[float, float]
            if len(value) != len(args):
                raise ValueError(
                    f"{where}: {key} must be a list of {len(args)}, got {_show(value)}"
                )
            return tuple(_convert(a, v, key, where) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, key, where) for v in value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {key} must be a finite number, got {_show(value)}")
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: {key} must be {tp.__name__}, got {_show(value)}")
    if tp is int and isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be int, got {_show(value)}")
    return value


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 4, 4, 60, 60


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _show(value: Any) -> str:
    """A bounded repr for messages: a YAML alias bomb is not expanded."""
    return _SHOW.repr(value)


def check_length(value: int | str) -> int:
    """``model.input_tdim`` as frames (>= 16). 'auto' is resolved from the data by the
    driver (:func:`jobs.kit.datasets.auto_length`) before the model is built."""
    if value == "auto":
        raise ValueError("model.input_tdim=auto must be resolved from the data first")
    if isinstance(value, bool) or not isinstance(value, int) or value < 16:
        raise ValueError(
            f"model.input_tdim must be 'auto' or a number of frames >= 16, got {_show(value)}"
        )
    return value


def with_length(cfg: T, length: int) -> T:
    """``cfg`` with ``model.input_tdim`` set to ``length``."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, input_tdim=length))


# ------------------------------------------------------------ shared sections
@dataclass(frozen=True, kw_only=True)
class ScalingSection:
    num_workers: int = 1
    """Ray Train workers (one process each; DDP when > 1)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL; CPU workers use gloo."""
    cpus_per_worker: float | None = None
    """CPUs reserved per worker (and its torch threads). None: on the local Ray a job
    starts itself, the machine's CPUs less one (kept for data loading; not kept when a
    pretraining set is small enough to be held in memory) shared by the workers, at
    least 1 each; on a cluster, 1."""
    max_failures: int = 3
    """Worker-group restarts (from the last checkpoint) before the run fails."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {"gpu_a100": 1} to pin a node group."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"scaling.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ValueError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ValueError(
                f"scaling.max_failures must be >= 0 (or -1: retry forever), got {self.max_failures}"
            )
        bad = {k: v for k, v in self.worker_resources.items() if not _positive(v)}
        if bad:
            raise ValueError(f"scaling.worker_resources must be > 0, got {_show(bad)}")

    def resolved(self, keep_for_data: bool = True) -> ScalingSection:
        """This section with ``cpus_per_worker`` decided (see its doc); logs the choice.
        ``keep_for_data=False``: the data needs no loading work (held in memory), so the
        workers may share every local CPU."""
        if self.cpus_per_worker is not None:
            return self
        from jobs.kit.cluster import local_cpus

        total = local_cpus()
        kept = 1 if keep_for_data else 0
        cpus = float(max(1, (total - kept) // self.num_workers)) if total else 1.0
        where = "a cluster"
        if total:
            where = f"a local Ray of {total} CPUs" + (
                ", one kept for data loading" if kept else ", the data in memory"
            )
        logging.getLogger("scaling").info(
            "scaling.cpus_per_worker=%g (%s, %d worker%s)",
            cpus,
            where,
            self.num_workers,
            "s" if self.num_workers > 1 else "",
        )
        return dataclasses.replace(self, cpus_per_worker=cpus)


@dataclass(frozen=True, kw_only=True)
class MlflowSection:
    tracking_uri: str | None = None
    """MLflow server or store; default: sqlite store under <project>/mlruns."""
    experiment: str = "ssast-pretrain"
    """Experiment name."""
    registered_model: str | None = None
    """Registry name of the final encoder; default ssast-<size>-<geometry>."""


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    """What both training jobs' optimizers share (see jobs/kit/optim.py)."""

    name: Literal["adam", "adamw"] = "adam"
    """Adam with coupled L2 (the paper) or AdamW (decoupled decay)."""
    lr: float = 5e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.95, 0.999)
    """The paper's Adam betas."""
    weight_decay: float = 5e-7
    """The paper's weight decay."""
    warmup_steps: int = 1000
    """Linear warm-up from 0 to lr over this many optimizer steps."""
    schedule: str = "cosine"
    """After warm-up (the choices depend on the job)."""
    min_lr: float = 0.0
    """Floor of the cosine schedule."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm (None: no clipping, as the paper)."""
    accumulate: int = 1
    """Micro-batches per optimizer step."""

    def __post_init__(self) -> None:
        if self.lr is not None and not _positive(self.lr):
            raise ValueError(f"optim.lr must be > 0 and finite, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.weight_decay >= 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.min_lr >= 0:
            raise ValueError(f"optim.min_lr must be >= 0, got {self.min_lr}")
        if self.grad_clip_norm is not None and not _positive(self.grad_clip_norm):
            raise ValueError(f"optim.grad_clip_norm must be > 0 or null, got {self.grad_clip_norm}")
        if self.accumulate < 1:
            raise ValueError(f"optim.accumulate must be >= 1, got {self.accumulate}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
