"""Configuration of fine-tuning (YAML + dotted overrides, see jobs/kit/config.py).

The recipes in jobs/configs/finetune_*.yaml set these fields to the paper's per-task
settings (shared/reference/ssast-original.md section 5.5).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal

from jobs.kit.config import MlflowSection, OptimSection, ScalingSection, check_length
from pipeline.normalization import check_choice
from ssast import GEOMETRIES, AdapterConfig, SSASTConfig
from ssast.config import PosInit

logger = logging.getLogger("finetune")

SCRATCH_LR = 1e-3
"""optim.lr when unset, with --init scratch."""
PRETRAINED_LR = 1e-4
"""optim.lr when unset, from a checkpoint (the paper's fine-tuning rate)."""


@dataclass(frozen=True, kw_only=True)
class FtModelSection:
    size: Literal["tiny", "small", "base", "base_nokd"] = "tiny"
    """Transformer size for init=scratch (a checkpoint brings its own)."""
    geometry: Literal["patch", "frame"] = "patch"
    """Patch shape for init=scratch: 16x16 patches or 128x2 frames."""
    patch_stride: tuple[int, int] | None = None
    """(freq, time) stride; smaller than the patch shape overlaps patches (the paper's
    patch recipes: (10, 10)). None: the patch shape (no overlap)."""
    input_tdim: int | Literal["auto"] = 1024
    """Target length in frames: clips are zero-padded at the end or cut to it; auto: the
    95th percentile of the training split's clip lengths rounded up to 16 frames, none
    counted above one segment in a dataset cut with features.segment_s (logged)."""
    pooling: Literal["mean", "cls"] = "mean"
    """Mean of the patch tokens (SSAST's ft_avgtok) or of the cls/dist outputs."""
    adapter: Literal["none", "lora", "bottleneck"] = "none"
    """Parameter-efficient fine-tuning: freeze the encoder and train the head plus LoRA
    on every block's attention projections (qkv, proj) or a bottleneck adapter after
    every block's MLP (ssast/adapters.py). none: train the whole encoder."""
    adapter_rank: int = 8
    """Rank r of the LoRA update or width of the bottleneck."""
    pos_init: PosInit = "trunc_normal"
    """Initial patch positions for init=scratch: the original's trunc_normal (std 0.02)
    or a 2-D sin-cos table (as model.pos_init of pretraining)."""

    def __post_init__(self) -> None:
        if self.input_tdim != "auto":
            check_length(self.input_tdim)
        if self.patch_stride is not None and not all(v >= 1 for v in self.patch_stride):
            raise ValueError(f"model.patch_stride must be >= 1, got {list(self.patch_stride)}")
        self.adapter_config()  # validates adapter_rank

    def adapter_config(self) -> AdapterConfig:
        try:
            return AdapterConfig(kind=self.adapter, rank=self.adapter_rank)
        except ValueError as err:
            raise ValueError(f"model.adapter / model.adapter_rank: {err}") from None

    def ssast_config(self, input_fdim: int = 128) -> SSASTConfig:
        shape = GEOMETRIES[self.geometry]
        return SSASTConfig(
            size=self.size,
            patch_shape=shape,
            patch_stride=self.patch_stride or shape,
            input_fdim=input_fdim,
            input_tdim=check_length(self.input_tdim),
            num_masked=1,
            pos_init=self.pos_init,
        )


@dataclass(frozen=True, kw_only=True)
class FtDataSection:
    label_column: str = "label"
    """Column holding the class (a string; with multilabel, names joined by the delimiter)."""
    split_column: str = "split"
    """Column whose value selects the train / valid / test rows."""
    train_split: str = "train"
    """Value of the split column for training rows."""
    valid_split: str = "valid"
    """Value for validation rows (model selection, early stopping)."""
    test_split: str = "test"
    """Value for test rows (scored once, at the end)."""
    multilabel: bool = False
    """Clips may carry several classes (multi-hot targets)."""
    label_delimiter: str = ","
    """Separator of class names in the label column when multilabel."""
    normalization: str = "dataset"
    """'dataset' (dataset.json statistics) or a preset: audioset, esc50, speechcommands.
    Saved with the model; prediction applies the same."""
    clip_mean: bool = False
    """Subtract each clip's own mean log-mel per mel bin instead of the dataset mean
    (cepstral mean normalisation): a recording's level, microphone and low-pass cancel
    out. Saved with the model; prediction applies the same."""
    shuffle_buffer: int = 256
    """Rows in each worker's local shuffle buffer."""
    limit: int | None = None
    """Use only the first N rows of each split (smoke runs)."""
    cache_mb: int = 2048
    """Prepare splits up to this size (as float32 model input) once, in Ray's object
    store, instead of reading them again every epoch."""

    def __post_init__(self) -> None:
        check_choice(self.normalization, "data.normalization")
        if self.normalization == "model":
            raise ValueError(
                "data.normalization=model is not a fine-tuning choice: use 'dataset' or a preset"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}")


@dataclass(frozen=True, kw_only=True)
class AugmentSection:
    freq_mask: int = 0
    """SpecAugment: maximum frequency-mask width in mel bins (the paper: 24 or 48)."""
    time_mask: int = 0
    """SpecAugment: maximum time-mask width in frames (the paper: 48 to 192)."""
    mixup: float = 0.0
    """Probability that a training clip is mixed with another clip of its batch."""
    mixup_alpha: float = 10.0
    """lambda ~ Beta(alpha, alpha)."""
    noise: bool = False
    """The original's noise: uniform noise x U(0, 0.1) and a random shift of +-10 frames."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"augment.mixup is a probability in [0, 1], got {self.mixup}")
        if self.freq_mask < 0 or self.time_mask < 0:
            raise ValueError("augment.freq_mask and augment.time_mask must be >= 0")


@dataclass(frozen=True, kw_only=True)
class FtOptimSection(OptimSection):
    lr: float | None = None
    """Learning rate of the encoder (the top layer with layer_decay < 1). None: chosen by
    --init (logged): 1e-3 from scratch, 1e-4 (the paper's rate) from a checkpoint."""
    warmup_steps: int = 0
    """Linear warm-up steps (the Speech Commands recipe: 1000)."""
    schedule: Literal["multistep", "cosine", "constant"] | None = None
    """multistep: lr x decay_factor per decay_every epochs after decay_start (the
    original's MultiStepLR); cosine to min_lr over the steps after warm-up; constant.
    None: chosen by --init (logged): cosine from scratch, multistep from a checkpoint."""
    head_lr_mult: float = 1.0
    """The head trains at lr x this."""
    layer_decay: float = 1.0
    """Layer-wise lr decay: block i of L trains at lr x decay^(L - i), the embeddings at
    lr x decay^(L + 1). 1.0: off (the original)."""
    decay_start: int = 10
    """multistep: last epoch at full lr."""
    decay_every: int = 5
    """multistep: epochs between decays."""
    decay_factor: float = 0.5
    """multistep: lr multiplier at each decay."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_lr_mult <= 0:
            raise ValueError(f"optim.head_lr_mult must be > 0, got {self.head_lr_mult}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.decay_every < 1:
            raise ValueError(f"optim.decay_every must be >= 1, got {self.decay_every}")


@dataclass(frozen=True, kw_only=True)
class FtTrainSection:
    max_epochs: int = 10
    """Passes over the training split."""
    batch_size: int = 16
    """Clips per worker per micro-batch."""
    eval_batch_size: int = 32
    """Clips per batch in validation and test."""
    loss: Literal["auto", "ce", "bce"] = "auto"
    """Cross-entropy (soft targets under mixup) or BCE-with-logits; auto: ce for
    single-label, bce for multilabel."""
    metric: Literal["auto", "accuracy", "mAP"] = "auto"
    """Validation metric for model selection and early stopping; auto: accuracy for
    single-label, mAP for multilabel."""
    early_stop_patience: int | None = None
    """Stop after this many epochs without a better validation metric (None: never)."""
    average_from_epoch: int | None = None
    """Average the weights of epochs >= this one (1-based) to the end, and use the average
    as the final model (the AudioSet-20K recipe: 6). None: the best validation epoch."""
    linear_probe: bool = False
    """Freeze the encoder and train only the head."""
    seed: int = 0
    """Seeds head init, shuffling and augmentation."""
    bf16: bool = True
    """bf16 autocast on GPU (ignored on CPU)."""
    keep_checkpoints: int = 1
    """Epoch checkpoints kept in storage (each holds the best and averaged weights)."""

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "eval_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if (
            self.average_from_epoch is not None
            and not 1 <= self.average_from_epoch <= self.max_epochs
        ):
            raise ValueError(
                f"train.average_from_epoch must be in [1, train.max_epochs="
                f"{self.max_epochs}], got {self.average_from_epoch}"
            )


@dataclass(frozen=True, kw_only=True)
class FtMlflowSection(MlflowSection):
    experiment: str = "ssast-finetune"
    """Experiment name."""
    registered_model: str | None = None
    """Register the fine-tuned classifier under this name (None: do not register)."""


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    init: str = "scratch"
    """'scratch', a checkpoint (ours or a released SSAST .pth, local or s3://), a
    pretraining output directory, or an MLflow URI (runs:/<id>/final/ssast.pt,
    models:/<name>/<version>)."""
    model: FtModelSection = field(default_factory=FtModelSection)
    data: FtDataSection = field(default_factory=FtDataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: FtOptimSection = field(default_factory=FtOptimSection)
    train: FtTrainSection = field(default_factory=FtTrainSection)
    scaling: ScalingSection = field(default_factory=lambda: ScalingSection(max_failures=1))
    mlflow: FtMlflowSection = field(default_factory=FtMlflowSection)
    name: str = "finetune"
    """Run name: the same name under the same --output resumes from its last epoch."""

    def with_init_defaults(self) -> FinetuneConfig:
        """optim.lr and optim.schedule left unset (None) chosen by ``init``: a from-scratch
        model needs a rate ten times the paper's fine-tuning rate for a pretrained
        encoder (at 1e-4 a tiny model from scratch stays near chance), and cosine decay."""
        o = self.optim
        if o.lr is not None and o.schedule is not None:
            return self
        scratch = self.init == "scratch"
        lr = o.lr if o.lr is not None else (SCRATCH_LR if scratch else PRETRAINED_LR)
        schedule = o.schedule or ("cosine" if scratch else "multistep")
        logger.info(
            "--init %s: optim.lr=%g, optim.schedule=%s%s",
            self.init,
            lr,
            schedule,
            " (defaults for a model trained from scratch)" if scratch else " (the paper's)",
        )
        return dataclasses.replace(self, optim=dataclasses.replace(o, lr=lr, schedule=schedule))
