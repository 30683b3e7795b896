"""Configuration of the evaluation suite job (jobs/benchmark.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

METHODS = ("baseline", "probe", "finetune")


@dataclass(frozen=True, kw_only=True)
class BenchmarkMlflowSection:
    tracking_uri: str | None = None
    """MLflow server or store; default: sqlite store under <project>/mlruns."""
    experiment: str = "ssast-benchmark"
    """Experiment of the parent run (one child run per task x method x encoder)."""


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    methods: tuple[Literal["baseline", "probe", "finetune"], ...] = ("baseline", "probe")
    """baseline: logistic regression on pooled fbank statistics (no encoder); probe: a
    logistic regression on frozen clip embeddings (mean of the patch tokens); finetune:
    the whole classifier trained with the recipe ``finetune_config`` (the epoch of the
    best valid accuracy is scored)."""
    probe_layers: Literal["last", "all"] = "last"
    """all: also probe the mean patch token after every block (methods probe@1 ...
    probe@L; probe is the last block, after the final LayerNorm)."""
    finetune_config: str = "jobs/configs/finetune_small.yaml"
    """The fine-tuning recipe (a jobs/finetune.py config; relative paths from the project
    root). The same recipe for every encoder, scratch included."""
    finetune_overrides: tuple[str, ...] = ()
    """Dotted overrides of that recipe, e.g. [train.max_epochs=10]."""
    num_seeds: int = 3
    """Runs of every stochastic method (fine-tuning; a scratch encoder's random weights);
    deterministic ones (the baseline, a probe on a trained encoder) run once."""
    input_tdim: int | None = None
    """Frames per clip given to the encoder; None (auto): each task's 95th percentile of
    clip lengths, rounded up to the patch's time size."""
    scratch_size: Literal["tiny", "small", "base"] = "tiny"
    """Size of a 'scratch' encoder when no other encoder gives the architecture (with
    another encoder, scratch is that architecture with random weights)."""
    clip_mean: bool | None = None
    """Per-clip mean normalisation of scratch's input (see data.clip_mean of the training
    jobs); None: as the trained encoders under test (off when there are none). A trained
    encoder always reads its input as it was trained."""
    batch_size: int = 32
    """Clips per encoder call."""
    cpus_per_run: float = 1.0
    """CPUs of each run (one Ray task per task x method x encoder x seed)."""
    reuse: bool = True
    """Take runs already done into the same output from OUTPUT/_runs.json (every finished
    run, kept by its inputs: the task's rows, the encoder's weights, method, seed, length,
    normalisation, recipe) instead of running them again: a benchmark that stopped
    resumes, and one given another encoder runs only that encoder's runs. false: run
    everything again (new results replace the kept ones; other kept runs stay)."""
    mlflow: BenchmarkMlflowSection = field(default_factory=BenchmarkMlflowSection)
    name: str = "benchmark"
    """Parent run name."""

    def __post_init__(self) -> None:
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ValueError(
                f"methods must be a non-empty list of {list(METHODS)}, got {list(self.methods)}"
            )
        if self.num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
        if self.input_tdim is not None and self.input_tdim < 16:
            raise ValueError(f"input_tdim must be >= 16 frames or null, got {self.input_tdim}")
