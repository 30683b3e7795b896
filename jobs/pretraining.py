"""Driver side of pretraining: data plan, the Ray Train run, final export and registry."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
import yaml

from jobs.pretrain_config import PretrainConfig
from jobs.pretrain_loop import STATE_FILE, train_loop_per_worker
from jobs.tracking import default_tracking_uri, register_encoder, start_run, ui_command
from pipeline.batches import Normalization, to_model_input
from pipeline.config import flatten, to_dict
from pipeline.features import FeatureConfig
from pipeline.featurize import stream_features
from pipeline.schema import NORMALIZATION_PRESETS, load_dataset_info, read_json
from ssast import load_checkpoint, save_checkpoint

logger = logging.getLogger("pretrain")
TRAIN_COLUMNS = ["fbank", "num_frames", "num_mel_bins"]


@dataclass(frozen=True)
class PretrainResult:
    storage: str
    final_dir: str
    steps: int
    metrics: dict[str, Any]
    mlflow_uri: str
    mlflow_run_id: str
    model_version: str | None


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the last good checkpoint is kept."""


def training_dataset(data: str, cfg: PretrainConfig):
    """(Ray Dataset of {"fbank": (T, F)} rows, normalisation, mel bins) for ``data``.

    ``data`` is a featurized dataset directory (statistics from its dataset.json) or a
    manifest / audio directory featurized on the fly (streaming; statistics from the
    preset named by data.normalization, AudioSet by default).

    The dataset holds as many passes over the data as the run needs, each with its own
    file order (a union of shuffled reads): Ray Train re-plans a dataset at every pass,
    which costs seconds, so one long stream keeps the workers fed on small data sets.
    """
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per step
    is_dataset = _exists(data.rstrip("/") + "/dataset.json")
    if is_dataset:
        info = load_dataset_info(data)
        F, stats, num_rows = info.feature_config.num_mel_bins, (info.mean, info.std), info.num_rows
    else:
        F, stats, num_rows = FeatureConfig().num_mel_bins, None, None
    norm = Normalization(*_statistics(cfg.data.normalization, stats))
    num_rows = min(num_rows or 0, cfg.data.limit or num_rows or 0) or None
    s, t = cfg.scaling, cfg.train
    needed = t.max_steps * t.batch_size * cfg.optim.accumulate * s.num_workers
    passes = 1 if num_rows is None else min(1000, -(-needed // num_rows) + 1)

    def one_pass(seed: int):
        if is_dataset:
            ds = ray.data.read_parquet(info.features_dir,
                                       shuffle=ray.data.FileShuffleConfig(seed=seed))
        else:
            ds = stream_features(data, FeatureConfig())
        ds = ds.select_columns(TRAIN_COLUMNS)
        if cfg.data.limit is not None:
            ds = ds.limit(cfg.data.limit)
        return ds.map_batches(_to_input, batch_format="pyarrow", batch_size=16,
                              fn_kwargs={"target_frames": cfg.model.input_tdim, "norm": norm})

    ds = one_pass(t.seed)
    size_mb = (num_rows or 0) * cfg.model.input_tdim * F * 4 / 2**20
    if num_rows is not None and size_mb <= cfg.data.cache_mb:
        # Small data: prepare it once in the object store; every pass is a reshuffled
        # view of those blocks instead of a new read.
        ds = ds.materialize()
        if passes > 1:
            ds = ds.union(*(ds.randomize_block_order(seed=t.seed + k) for k in range(1, passes)))
    elif passes > 1:
        ds = ds.union(*(one_pass(t.seed + k) for k in range(1, passes)))
    return ds, norm, F


def _statistics(name: str, stats: tuple[float, float] | None) -> tuple[float, float]:
    if name != "dataset":
        if name not in NORMALIZATION_PRESETS:
            raise ValueError(f"data.normalization must be 'dataset' or one of "
                             f"{sorted(NORMALIZATION_PRESETS)}, got {name!r}")
        return NORMALIZATION_PRESETS[name]
    if stats is None:
        logger.warning("streaming from a manifest has no dataset statistics; using the "
                       "AudioSet preset (set data.normalization to choose another)")
        return NORMALIZATION_PRESETS["audioset"]
    return stats


def _to_input(batch, *, target_frames: int, norm: Normalization):
    return {"fbank": to_model_input(batch, target_frames, norm)["fbank"]}


def run_pretraining(data: str, storage: str, cfg: PretrainConfig) -> PretrainResult:
    """Pretrain with Ray Train; resumes when ``storage/cfg.name`` has checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = storage if "://" in storage else os.path.abspath(storage)
    ds, norm, num_mel_bins = training_dataset(data, cfg)
    model_cfg = cfg.model.ssast_config(input_fdim=num_mel_bins)
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    params = flatten(to_dict(cfg)) | {"data": data, "storage": storage,
                                      "norm.mean": norm.mean, "norm.std": norm.std}
    run_id = start_run(uri, cfg.mlflow.experiment, cfg.name, f"{storage}/{cfg.name}", params)
    marker = f"{storage}/{cfg.name}/_nonfinite.json"
    _remove(marker)  # a rerun after fixing the cause starts clean
    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "model": model_cfg.to_dict(),
                           "mlflow": {"uri": uri, "run_id": run_id},
                           "nonfinite_marker": marker},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker,
                                                           **s.worker_resources}),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
        datasets={"train": ds},
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    stopped = read_json(marker)
    if stopped is not None:
        _end_run(uri, run_id, "FAILED")
        last = result.checkpoint.path if result.checkpoint else "none"
        raise NonFiniteLossError(
            f"loss became NaN/inf at step {stopped['step']} (lr {stopped['lr']:.3g}); last "
            f"good checkpoint: {last}. Lower optim.lr, set optim.grad_clip_norm, or check "
            "the data statistics"
        )
    final_dir = f"{storage}/final"
    version = _export_final(result.checkpoint, final_dir, cfg, uri, run_id)
    _end_run(uri, run_id, "FINISHED")
    return PretrainResult(storage, final_dir, int(metrics.get("step", 0)), metrics, uri,
                          run_id, version)


def _export_final(checkpoint, final_dir: str, cfg: PretrainConfig, uri: str, run_id: str):
    """Write final/ssast.pt (ours), final/ssast_original.pth (released layout), config."""
    import mlflow

    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    model = load_checkpoint(state)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_checkpoint(model, tmp / "ssast.pt", extra={"step": state["step"]})
        torch.save(model.to_original_state_dict(), tmp / "ssast_original.pth")
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        fs, root = fsspec.core.url_to_fs(final_dir)
        fs.makedirs(root, exist_ok=True)
        for f in tmp.iterdir():
            fs.put_file(str(f), f"{root}/{f.name}")
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        client.log_artifact(run_id, str(tmp / "config.yaml"))
        client.log_artifact(run_id, str(tmp / "ssast.pt"), "final")
        name = cfg.mlflow.registered_model or f"ssast-{cfg.model.size}-{cfg.model.geometry}"
        return register_encoder(uri, run_id, tmp / "ssast.pt", name)


def _end_run(uri: str, run_id: str, status: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().set_terminated(run_id, status=status)


def _remove(path: str) -> None:
    fs, p = fsspec.core.url_to_fs(path)
    if fs.exists(p):
        fs.rm(p)


def _exists(path: str) -> bool:
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def describe(result: PretrainResult) -> str:
    return "\n".join([
        f"checkpoints  {result.storage}",
        f"final        {result.final_dir}/ssast.pt and ssast_original.pth",
        f"steps        {result.steps}, last loss {result.metrics.get('loss', float('nan')):.4f}",
        f"mlflow       run {result.mlflow_run_id} at {result.mlflow_uri}",
        f"registered   version {result.model_version}",
        f"open the UI  {ui_command(result.mlflow_uri)}",
    ])
