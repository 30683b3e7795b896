"""Configuration of the pretraining job (YAML + dotted overrides, see jobs/kit/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jobs.kit.config import MlflowSection, OptimSection, ScalingSection, check_length
from pipeline.features import FeatureConfig
from pipeline.normalization import check_choice
from ssast import GEOMETRIES, SSASTConfig
from ssast.config import PosInit


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    size: Literal["tiny", "small", "base", "base_nokd"] = "tiny"
    """Transformer size."""
    geometry: Literal["patch", "frame"] = "patch"
    """16x16 patches (cluster masking) or 128x2 frames (random masking)."""
    input_tdim: int | Literal["auto"] = 1024
    """Frames per training example (clips are zero-padded or cut to this); auto: the 95th
    percentile of the dataset's clip lengths rounded up to 16 frames, none counted above
    one segment in a dataset cut with features.segment_s (logged)."""
    num_masked: int = 400
    """M, masked patches per clip."""
    mask_ratio: float | None = None
    """Mask this fraction of each clip's patches instead of num_masked (e.g. with
    input_tdim=auto, where the number of patches follows the data); the paper's 400 of
    512 patches is 0.78."""
    generative_weight: float = 10.0
    """lambda in nce + lambda * mse."""
    two_pass: bool = False
    """The original's two encoder passes with independent masks (slower; faithful)."""
    pos_init: PosInit = "trunc_normal"
    """Initial patch positions: the original's trunc_normal (std 0.02) or a 2-D sin-cos
    table (learned from there). On small data with trunc_normal the outputs at masked
    positions collapse to one vector per clip (InfoNCE stays at chance); sincos starts
    them apart."""

    def __post_init__(self) -> None:
        if self.input_tdim != "auto":
            check_length(self.input_tdim)
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise ValueError(f"model.mask_ratio must be in (0, 1) or null, got {self.mask_ratio}")
        if self.mask_ratio is None and self.input_tdim != "auto":
            f, t = GEOMETRIES[self.geometry]
            patches = (128 // f) * (self.input_tdim // t)  # 128 mel bins; others checked at build
            if not 1 <= self.num_masked < patches:
                raise ValueError(
                    f"model.num_masked must be in [1, {patches}) for {patches} patches "
                    f"(input_tdim {self.input_tdim}, {self.geometry}), got {self.num_masked}; "
                    "or set model.mask_ratio"
                )

    def masked(self, input_fdim: int) -> int:
        """M for this input: num_masked, or mask_ratio of the patches (at least 1)."""
        if self.mask_ratio is None:
            return self.num_masked
        f, t = GEOMETRIES[self.geometry]
        patches = (input_fdim // f) * (check_length(self.input_tdim) // t)
        return max(1, round(self.mask_ratio * patches))

    def ssast_config(self, input_fdim: int = 128) -> SSASTConfig:
        shape = GEOMETRIES[self.geometry]
        return SSASTConfig(
            size=self.size,
            patch_shape=shape,
            patch_stride=shape,
            input_fdim=input_fdim,
            input_tdim=check_length(self.input_tdim),
            num_masked=self.masked(input_fdim),
            generative_weight=self.generative_weight,
            pos_init=self.pos_init,
        )


@dataclass(frozen=True, kw_only=True)
class DataSection:
    normalization: str = "dataset"
    """'dataset' (mean/std from dataset.json; a manifest has none and falls back to the
    AudioSet preset with a warning) or a preset: audioset, esc50, speechcommands."""
    clip_mean: bool = False
    """Subtract each clip's own mean log-mel per mel bin instead of the dataset mean
    (cepstral mean normalisation): a recording's level, microphone and low-pass cancel
    out. Saved with the model; fine-tune with the same."""
    shuffle_buffer: int = 64
    """Rows in each worker's local shuffle buffer (files are shuffled too)."""
    limit: int | None = None
    """Use only the first N rows (smoke runs)."""
    prefetch_batches: int = 2
    """Batches each worker prepares ahead of the step."""
    cache_mb: int = 2048
    """Prepare data sets up to this size (as float32 model input) once, in Ray's object
    store, instead of reading them again for every pass."""

    def __post_init__(self) -> None:
        check_choice(self.normalization, "data.normalization")
        if self.normalization == "model":
            raise ValueError(
                "data.normalization=model: a model being pretrained has no "
                "statistics yet; use 'dataset' or a preset"
            )
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}")


@dataclass(frozen=True, kw_only=True)
class PretrainOptimSection(OptimSection):
    lr: float = 5e-4
    """Peak learning rate (paper: 5e-4 tiny, 1e-4 base)."""
    warmup_steps: int = 1000
    """Linear warm-up from 0 to lr (the paper: 1000 steps, staircase)."""
    schedule: Literal["cosine", "constant", "plateau"] = "cosine"
    """After warm-up: cosine to min_lr, constant, or the paper's halving on a plateau of
    the masked-patch accuracy (checked every log interval, patience below)."""
    plateau_patience: int = 2
    """Intervals without accuracy improvement before halving (schedule=plateau)."""


@dataclass(frozen=True, kw_only=True)
class TrainSection:
    max_steps: int = 100
    """Optimizer steps in total (across restarts)."""
    batch_size: int = 8
    """Clips per worker per micro-batch."""
    log_every: int = 10
    """Steps between metric reports (and the rank-0 log line)."""
    checkpoint_every: int = 50
    """Steps between checkpoints (rounded up to a multiple of log_every)."""
    keep_checkpoints: int = 3
    """Checkpoints kept in storage."""
    image_every: int = 100
    """Steps between spectrogram / mask / reconstruction pictures in MLflow (0: never)."""
    seed: int = 0
    """Seeds model init, masks and shuffling."""
    bf16: bool = True
    """bf16 autocast on GPU (ignored on CPU)."""

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class EvalSection:
    every_steps: int = 0
    """Run the linear probe on every checkpoint whose step is a multiple of this (0: off).
    Use a multiple of train.checkpoint_every."""
    data: str | None = None
    """A labelled featurized dataset (label column; train / valid / test splits) to probe
    on, made with the pretraining data's feature settings."""
    task: str | None = None
    """Name in the metric keys probe/<task>/accuracy; default: the dataset folder's name."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"eval.every_steps must be >= 0, got {self.every_steps}")
        if self.every_steps and not self.data:
            raise ValueError("eval.every_steps needs eval.data (a labelled featurized dataset)")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: PretrainOptimSection = field(default_factory=PretrainOptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    mlflow: MlflowSection = field(default_factory=MlflowSection)
    eval: EvalSection = field(default_factory=EvalSection)
    features: FeatureConfig | None = None
    """How raw audio is featurized when --data is a manifest (None: the SSAST defaults).
    With a featurized dataset, None takes the dataset's settings and a value must equal
    them. Recorded in the encoder's checkpoint."""
    name: str = "pretrain"
    """Run name: the same name under the same --output resumes from its last checkpoint."""
