"""Driver side of pretraining: the data plan, the Ray Train run, the final export and the
model registry."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
import yaml

from jobs.kit.config import flatten, to_dict, with_length
from jobs.kit.datasets import (
    DRIVER_PREPARE_MB,
    auto_length,
    input_mb,
    quiet_training_passes,
    read_rows,
    shard_files,
)
from jobs.kit.models import contract
from jobs.kit.timing import Phases
from jobs.kit.tracking import (
    Tracker,
    default_tracking_uri,
    end_run,
    register_encoder,
    start_run,
    ui_command,
)
from jobs.kit.training import clear_stop, load_state, raise_if_stopped, stop_marker
from jobs.pretraining.config import PretrainConfig
from jobs.pretraining.probe import CheckpointProbe
from jobs.pretraining.worker import train_loop_per_worker
from pipeline.batches import MODEL_INPUT_COLUMNS, to_model_input
from pipeline.features import FeatureConfig
from pipeline.featurize import stream_features
from pipeline.normalization import Normalization, choose_normalization
from pipeline.schema import feature_diff, load_dataset_info
from pipeline.storage import OutputLock, absolute, exists
from ssast import load_checkpoint, save_checkpoint

logger = logging.getLogger("pretrain")


@dataclass(frozen=True)
class PretrainResult:
    storage: str
    final_dir: str
    steps: int
    metrics: dict[str, Any]
    mlflow_uri: str
    mlflow_run_id: str
    model_version: str | None


@dataclass(frozen=True)
class TrainingData:
    """The training stream and the feature contract it implies."""

    ds: Any
    """Ray Dataset of {"fbank": (T, F) normalised float32} rows, all passes of the run;
    None when ``clips`` holds the data."""
    features: FeatureConfig
    normalization: Normalization
    num_rows: int | None
    """Rows per pass (None: streamed from a manifest, not counted)."""
    clips: Any = None
    """Small data: an ObjectRef of the (N, T, F) model input, prepared here once; each
    worker reads it from the object store and draws its own batches (no Ray Data stream,
    whose actors cost seconds of start-up)."""


def passes_needed(cfg: PretrainConfig, num_rows: int | None) -> int:
    """Passes over ``num_rows`` that the run's samples need, plus one for the rows each
    worker's equal split and ``drop_last`` leave out (capped at 1000)."""
    if num_rows is None:
        return 1
    s, t = cfg.scaling, cfg.train
    needed = t.max_steps * t.batch_size * cfg.optim.accumulate * s.num_workers
    return min(1000, -(-needed // num_rows) + 1)


def training_data(data: str, cfg: PretrainConfig) -> TrainingData:
    """The training stream for ``data``: a featurized dataset directory (its statistics
    and feature settings) or a manifest / audio directory featurized on the fly with
    ``cfg.features`` (no statistics: data.normalization falls back to a preset).

    The stream holds as many passes over the data as the run needs, each with its own
    file order: Ray Train re-plans a dataset at every pass, which costs seconds, so one
    long stream keeps the workers fed on small data sets.
    """
    import ray

    quiet_training_passes()
    info = load_dataset_info(data) if exists(data.rstrip("/") + "/dataset.json") else None
    if info is not None:
        features = info.feature_config
        if cfg.features is not None and not cfg.features.same_frames(features):
            raise ValueError(
                f"{data} was featurized with other settings than the config's "
                f"features ({feature_diff(features, cfg.features, 'data', 'config')}); drop "
                "`features` from the config or featurize again"
            )
        stats = info.statistics
        num_rows = min(info.num_rows, cfg.data.limit or info.num_rows)
    else:
        features, stats, num_rows = cfg.features or FeatureConfig(), None, None
    norm = choose_normalization(cfg.data.normalization, dataset=stats)
    norm = dataclasses.replace(norm, clip_mean=cfg.data.clip_mean)
    size_mb = input_mb(num_rows or 0, cfg.model.input_tdim, features.num_mel_bins)
    if info is not None and size_mb <= DRIVER_PREPARE_MB:
        # Small data: prepared here once, into the object store for the workers.
        rows = read_rows(info.features_dir, MODEL_INPUT_COLUMNS, limit=cfg.data.limit)
        clips = to_model_input(rows, cfg.model.input_tdim, norm)  # (N, T, F)
        return TrainingData(None, features, norm, num_rows, ray.put(clips))
    t = cfg.train
    passes = passes_needed(cfg, num_rows)

    def one_pass(seed: int):
        if info is not None:
            ds = ray.data.read_parquet(
                shard_files(info.features_dir), shuffle=ray.data.FileShuffleConfig(seed=seed)
            )
        else:
            ds = stream_features(data, features)
        ds = ds.select_columns(list(MODEL_INPUT_COLUMNS))
        if cfg.data.limit is not None:
            ds = ds.limit(cfg.data.limit)
        return ds.map_batches(
            _to_input,
            batch_format="pyarrow",
            batch_size=16,
            fn_kwargs={"target_frames": cfg.model.input_tdim, "norm": norm},
        )

    if num_rows is not None and size_mb <= cfg.data.cache_mb:
        # Mid-sized data: prepared once by Ray Data into the object store.
        ds = _passes(one_pass(t.seed).materialize(), passes, t.seed)
    else:
        ds = one_pass(t.seed)
        if passes > 1:
            ds = ds.union(*(one_pass(t.seed + k) for k in range(1, passes)))
    return TrainingData(ds, features, norm, num_rows)


def _passes(ds, passes: int, seed: int):
    """``passes`` reshuffled views (block order) of a materialized dataset, one stream."""
    views = [ds.randomize_block_order(seed=seed + k) for k in range(passes)]
    return views[0].union(*views[1:]) if passes > 1 else views[0]


def _to_input(batch, *, target_frames: int, norm: Normalization):
    return {"fbank": to_model_input(batch, target_frames, norm)}


def run_pretraining(
    data: str, storage: str, cfg: PretrainConfig, phases: Phases | None = None
) -> PretrainResult:
    """Pretrain with Ray Train; resumes when ``storage/cfg.name`` has checkpoints.
    ``phases`` times the driver's phases (logged, and to the MLflow run).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        OutputBusyError: another job is writing ``storage`` (refused before any work).
    """
    storage = absolute(storage)
    with OutputLock(storage):
        return _pretrain(data, storage, cfg, phases or Phases(startup=False))


def _pretrain(data: str, storage: str, cfg: PretrainConfig, phases: Phases) -> PretrainResult:
    with phases("imports"):
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

    with phases("data_plan"):
        if cfg.model.input_tdim == "auto":
            cfg = with_length(cfg, _auto_length(data))
        plan = training_data(data, cfg)
        # Data in the object store needs no CPU for loading; a stream does.
        scaling = cfg.scaling.resolved(keep_for_data=plan.clips is None)
        cfg = dataclasses.replace(cfg, scaling=scaling)
    model_cfg = cfg.model.ssast_config(input_fdim=plan.features.num_mel_bins)
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    params = flatten(to_dict(cfg)) | {
        "data": data,
        "storage": storage,
        "norm.mean": plan.normalization.mean,
        "norm.std": plan.normalization.std,
    }
    with phases("mlflow_run"):
        run_id = start_run(uri, cfg.mlflow.experiment, cfg.name, f"{storage}/{cfg.name}", params)
    marker = stop_marker(storage, cfg.name)
    clear_stop(marker)
    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "model": model_cfg.to_dict(),
            "mlflow": (uri, run_id),
            "marker": marker,
            "fit_start": time.time(),  # rank 0 logs its start-up and first step from here
            "clips": plan.clips,
        },
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **s.worker_resources},
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
        datasets={"train": plan.ds} if plan.ds is not None else None,
    )
    probe = nullcontext()
    if cfg.eval.every_steps:
        probe = CheckpointProbe(
            cfg.eval.data,
            cfg.eval.task,
            cfg.eval.every_steps,
            storage,
            cfg.name,
            plan.features,
            plan.normalization,
            Tracker(uri, run_id),
        )
    with probe, phases("fit"):
        result = trainer.fit()
    try:
        raise_if_stopped(marker, result)
    except Exception:
        end_run(uri, run_id, "FAILED")
        raise
    metrics = dict(result.metrics or {})
    final_dir = f"{storage}/final"
    version = _export_final(result.checkpoint, final_dir, cfg, plan, uri, run_id, phases)
    phases.log_to(uri, run_id)
    end_run(uri, run_id)
    return PretrainResult(
        storage, final_dir, int(metrics.get("step", 0)), metrics, uri, run_id, version
    )


def _auto_length(data: str) -> int:
    if not exists(data.rstrip("/") + "/dataset.json"):
        raise ValueError(
            f"model.input_tdim=auto measures a featurized dataset, and {data} has no "
            "dataset.json: featurize it first (jobs/featurize.py) or give a number of frames"
        )
    return auto_length(load_dataset_info(data))


def _export_final(
    checkpoint,
    final_dir: str,
    cfg: PretrainConfig,
    plan: TrainingData,
    uri: str,
    run_id: str,
    phases: Phases,
) -> str:
    """Write final/ssast.pt (ours, with its feature contract), final/ssast_original.pth
    (the released layout) and the config; log and register the encoder."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with phases("export"):
            with checkpoint.as_directory() as d:
                state = load_state(d)
            model = load_checkpoint(state)
            save_checkpoint(
                model,
                tmp / "ssast.pt",
                extra={"step": state["step"], **contract(plan.features, plan.normalization)},
            )
            torch.save(model.to_original_state_dict(), tmp / "ssast_original.pth")
            (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            fs, root = fsspec.core.url_to_fs(final_dir)
            fs.makedirs(root, exist_ok=True)
            for f in tmp.iterdir():
                fs.put_file(str(f), f"{root}/{f.name}")
            client = mlflow.MlflowClient(uri)
            client.log_artifact(run_id, str(tmp / "config.yaml"))
            client.log_artifact(run_id, str(tmp / "ssast.pt"), "final")
        name = cfg.mlflow.registered_model or f"ssast-{cfg.model.size}-{cfg.model.geometry}"
        with phases("registry"):
            return register_encoder(uri, run_id, tmp / "ssast.pt", name)


def describe(result: PretrainResult) -> str:
    loss = result.metrics.get("train/loss", float("nan"))
    return "\n".join(
        [
            f"checkpoints  {result.storage}",
            f"final        {result.final_dir}/ssast.pt and ssast_original.pth",
            f"steps        {result.steps}, last loss {loss:.4f}",
            f"mlflow       run {result.mlflow_run_id} at {result.mlflow_uri}",
            f"registered   version {result.model_version}",
            f"open the UI  {ui_command(result.mlflow_uri)}",
        ]
    )
