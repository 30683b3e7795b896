"""Configuration of batch prediction and evaluation (jobs/predict.py, jobs/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.normalization import check_choice


@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    mode: Literal["labels", "scores", "embeddings", "timestamps"] = "labels"
    """labels: top-k class names and probabilities; scores: every logit; embeddings: the
    mean-pooled patch tokens (any checkpoint, also a pretrained encoder); timestamps: one
    row per window (window_index, window_start_s, window_end_s) with its top-k labels (a
    fine-tuned model) or its embedding (a pretrained encoder)."""
    windows: bool = True
    """Clips longer than the model's input: predict windows of the input's length every
    hop_frames and average their logits (embeddings); false: the first input_tdim frames
    only (as fine-tuning and jobs/evaluate.py score)."""
    hop_frames: int | None = None
    """Frames between window starts; None: half the model's input length."""
    top_k: int = 5
    """Labels per clip in mode=labels."""
    batch_size: int = 32
    """Clips per model call."""
    num_actors: int = 2
    """Model replicas (Ray actors), each with its own copy of the model."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per actor (its torch threads)."""
    use_gpu: bool = False
    """One GPU per actor."""
    normalization: str = "model"
    """'model' (the statistics the model was trained with; a released checkpoint has none
    and falls back to the input's, then to the AudioSet preset, with a warning),
    'dataset' (dataset.json of a featurized input) or a preset: audioset, esc50,
    speechcommands."""
    featurize_in: Literal["auto", "actors", "tasks"] = "auto"
    """Audio input: decode and featurize in the model actors (each clip stays in one
    process; fastest on CPUs), in separate Ray Data tasks feeding the actors (many CPUs
    keep GPUs busy), or auto: actors on CPU, tasks with use_gpu."""

    @property
    def featurize_in_actors(self) -> bool:
        return self.featurize_in == "actors" or (self.featurize_in == "auto" and not self.use_gpu)

    def __post_init__(self) -> None:
        check_choice(self.normalization)
        if self.top_k < 1 or self.batch_size < 1 or self.num_actors < 1:
            raise ValueError("top_k, batch_size and num_actors must be >= 1")
        if self.hop_frames is not None and self.hop_frames < 1:
            raise ValueError(f"hop_frames must be >= 1 or null, got {self.hop_frames}")
        if self.mode == "timestamps" and not self.windows:
            raise ValueError("mode=timestamps needs windows=true")

    def hop(self, input_tdim: int) -> int | None:
        """Window hop in frames for a model of ``input_tdim`` frames; None: no windows."""
        if not self.windows:
            return None
        return self.hop_frames or max(1, input_tdim // 2)
