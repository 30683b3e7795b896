"""Driver side of fine-tuning: the task and its splits, the initial model, the Ray Train
run, final model selection, test scores, outputs and MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import yaml

from jobs.finetuning.config import FinetuneConfig
from jobs.finetuning.task import Task, read_task
from jobs.finetuning.worker import predict_batches, train_loop_per_worker
from jobs.inference.config import PredictConfig
from jobs.inference.driver import PredictInput, score_dataset
from jobs.kit.config import flatten, to_dict, with_length
from jobs.kit.datasets import (
    DRIVER_PREPARE_MB,
    auto_length,
    input_mb,
    prepared_dataset,
    quiet_training_passes,
    read_rows,
    shard_files,
)
from jobs.kit.metrics import confusion_matrix, format_report, per_class_report, summary
from jobs.kit.models import ModelFile, check_features, contract, encoder_of, read_model
from jobs.kit.tracking import (
    default_tracking_uri,
    end_run,
    register_classifier,
    start_run,
    ui_command,
)
from jobs.kit.training import clear_stop, load_state, raise_if_stopped, stop_marker
from pipeline.batches import MODEL_INPUT_COLUMNS, ModelInput
from pipeline.schema import DatasetInfo, load_dataset_info
from pipeline.storage import OutputLock, absolute
from ssast import SSASTClassifier, load_checkpoint
from ssast.checkpoint import checkpoint_payload

logger = logging.getLogger("finetune")


@dataclass(frozen=True)
class FinetuneResult:
    output: str
    metrics: dict[str, Any]
    mlflow_uri: str
    mlflow_run_id: str
    model_version: str | None


# ------------------------------------------------------------------- the data
def raw_split(info: DatasetInfo, cfg: FinetuneConfig, split: str):
    """Ray Dataset of the feature rows of one split (fbank, label and split columns)."""
    import ray
    from ray.data.expressions import col

    d = cfg.data
    ds = ray.data.read_parquet(shard_files(info.features_dir)).select_columns(
        [*MODEL_INPUT_COLUMNS, d.label_column, d.split_column]
    )
    ds = ds.filter(expr=col(d.split_column) == split)
    return ds.limit(d.limit) if d.limit is not None else ds


def split_rows(info: DatasetInfo, cfg: FinetuneConfig, split: str):
    """The feature rows of one split as one Arrow table, read in this process."""
    d = cfg.data
    return read_rows(
        info.features_dir,
        [*MODEL_INPUT_COLUMNS, d.label_column],
        where=(d.split_column, split),
        limit=d.limit,
    )


def split_dataset(
    info: DatasetInfo, cfg: FinetuneConfig, split: str, spec: ModelInput, num_rows: int
):
    """Ray Dataset of {"fbank", "target"} rows of one split: prepared in this process when
    small, by Ray Data into the object store up to data.cache_mb, else streamed."""
    size_mb = input_mb(num_rows, spec.target_frames, info.feature_config.num_mel_bins)
    if size_mb <= DRIVER_PREPARE_MB:
        return prepared_dataset(split_rows(info, cfg, split), spec.prepare)
    ds = raw_split(info, cfg, split).map_batches(
        spec.prepare, batch_format="pyarrow", batch_size=32
    )
    return ds.materialize() if size_mb <= cfg.data.cache_mb else ds


@dataclass(frozen=True)
class PreparedData:
    """What every run on one dataset, length and label set shares: the dataset's
    description, the task and the model-ready train / valid splits (Ray Datasets,
    materialized in the object store when small)."""

    info: DatasetInfo
    task: Task
    spec: ModelInput
    datasets: dict[str, Any]


def prepare_data(data: str, cfg: FinetuneConfig) -> PreparedData:
    """Read the task and prepare the train / valid splits for ``cfg.model.input_tdim``
    (auto: measured on the training split)."""
    quiet_training_passes()
    info = load_dataset_info(data)
    task = read_task(info, cfg)
    d = cfg.data
    length = cfg.model.input_tdim
    if length == "auto":
        length = auto_length(info, (d.split_column, d.train_split))
    spec = ModelInput(length, task.normalization, task.labels)
    datasets = {
        name: split_dataset(info, cfg, split, spec, task.rows[split])
        for name, split in (("train", d.train_split), ("valid", d.valid_split))
    }
    return PreparedData(info, task, spec, datasets)


# ------------------------------------------------------------ initial model
def initial_model(cfg: FinetuneConfig, info: DatasetInfo, num_classes: int) -> SSASTClassifier:
    """The classifier to fine-tune: random (scratch), or an encoder from ``cfg.init``
    adapted to the fine-tuning stride and length (positions cropped / resized as the
    original does) with a new head.

    Raises:
        ValueError: the encoder was trained on other feature settings than the dataset's.
    """
    m, num_mel_bins = cfg.model, info.feature_config.num_mel_bins
    torch.manual_seed(cfg.train.seed)
    if cfg.init == "scratch":
        return SSASTClassifier(
            m.ssast_config(num_mel_bins), num_classes, m.pooling, m.adapter_config()
        )
    init: ModelFile = read_model(cfg.init)
    check_features(init, info.feature_config, info.root)
    if init.normalization is not None and init.normalization.clip_mean != cfg.data.clip_mean:
        logger.warning(
            "init %s was trained with data.clip_mean=%s and this run uses %s: set "
            "data.clip_mean=%s to give the encoder its input as it learned it",
            cfg.init,
            init.normalization.clip_mean,
            cfg.data.clip_mean,
            init.normalization.clip_mean,
        )
    model = encoder_of(init.model, init.ref)  # a fine-tuned classifier continues from its encoder
    logger.info(
        "init %s: %s %s, patch %s; model.size / model.geometry are ignored",
        cfg.init,
        model.cfg.size,
        "patches" if model.cfg.patch_shape[0] < model.cfg.input_fdim else "frames",
        model.cfg.patch_shape,
    )
    stride = m.patch_stride or model.cfg.patch_shape
    adapted = model.adapted(patch_stride=stride, input_fdim=num_mel_bins, input_tdim=m.input_tdim)
    return SSASTClassifier.from_pretrained(adapted, num_classes, m.pooling, m.adapter_config())


# ----------------------------------------------------------------- the run
def run_finetuning(
    data: str,
    output: str,
    cfg: FinetuneConfig,
    *,
    prepared: PreparedData | None = None,
    parent_run_id: str | None = None,
    score_final: bool = True,
    callbacks: list | None = None,
    lock: bool = True,
) -> FinetuneResult:
    """Fine-tune on Ray Train; resumes when ``output/cfg.name`` has checkpoints.

    Writes OUTPUT/model.pt (the final classifier with its task and feature contract) and
    OUTPUT/metrics.json. ``prepared`` reuses splits prepared by :func:`prepare_data` (Tune
    trials share them); ``parent_run_id`` nests the MLflow run; ``score_final=False``
    skips scoring the final model on the test split (and the weight average on the valid
    split); ``callbacks`` go to Ray Train; ``lock=False`` when the caller holds the lock of
    a parent folder (a Tune trial: Tune owns the sweep's folder and retries trials).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        OutputBusyError: another job is writing ``output`` (refused before any work).
    """
    output = absolute(output)
    with OutputLock(output) if lock else nullcontext():
        return _finetune(data, output, cfg, prepared, parent_run_id, score_final, callbacks)


def _finetune(
    data: str,
    output: str,
    cfg: FinetuneConfig,
    prepared: PreparedData | None,
    parent_run_id: str | None,
    score_final: bool,
    callbacks: list | None,
) -> FinetuneResult:
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = cfg.with_init_defaults()
    cfg = dataclasses.replace(cfg, scaling=cfg.scaling.resolved())
    prepared = prepared or prepare_data(data, cfg)
    info, task = prepared.info, prepared.task
    if cfg.model.input_tdim == "auto":
        cfg = with_length(cfg, prepared.spec.target_frames)
    if prepared.spec.target_frames != cfg.model.input_tdim:
        raise ValueError(
            f"prepared data has {prepared.spec.target_frames} frames, the config "
            f"model.input_tdim={cfg.model.input_tdim}"
        )
    clf = initial_model(cfg, info, task.num_classes)
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    params = flatten(to_dict(cfg)) | {
        "data": data,
        "output": output,
        "num_classes": task.num_classes,
        "norm.mean": task.normalization.mean,
        "norm.std": task.normalization.std,
    }
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
    run_id = start_run(
        uri, cfg.mlflow.experiment, cfg.name, f"{output}/{cfg.name}", params, tags=tags
    )
    marker = stop_marker(output, cfg.name)
    clear_stop(marker)
    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "task": task,
            "init": ray.put(checkpoint_payload(clf)),
            "mlflow": (uri, run_id),
            "marker": marker,
        },
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **s.worker_resources},
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=output,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or [],
        ),
        datasets=prepared.datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    try:
        raise_if_stopped(marker, result)
    except Exception:
        end_run(uri, run_id, "FAILED")
        raise
    final, state = final_classifier(result.checkpoint)
    payload = model_payload(final, prepared, epoch=state["epoch"])
    metrics = {
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        f"valid/{task.metric}": state["best_metric"],
        "final": "average" if state["avg_count"] else "best",
    }
    reports = _score_final(payload, prepared, cfg, state) if score_final else {}
    for name, (scores, targets) in reports.items():
        metrics |= summary(scores, targets, name)
    files = _write_outputs(output, payload, metrics, reports, task, cfg)
    try:
        version = _log_final(uri, run_id, metrics, files, cfg)
    finally:
        shutil.rmtree(next(iter(files.values())).parent, ignore_errors=True)
    return FinetuneResult(output, metrics, uri, run_id, version)


def model_payload(model: SSASTClassifier, prepared: PreparedData, **extra) -> dict[str, Any]:
    """The saved classifier: weights, its task and the feature contract it was trained on."""
    return checkpoint_payload(
        model,
        extra={
            "task": prepared.task.saved(),
            **contract(prepared.info.feature_config, prepared.task.normalization),
            **extra,
        },
    )


def _score_final(
    payload: dict, prepared: PreparedData, cfg: FinetuneConfig, state: dict
) -> dict[str, tuple]:
    """{"valid" (the average was never validated), "test"}: (scores, targets). A small
    split is scored in this process, a large one on an actor pool (jobs/inference)."""
    import ray

    d, task, spec = cfg.data, prepared.task, prepared.spec
    splits = ([d.valid_split] if state["avg_count"] else []) + (
        [d.test_split] if task.rows[d.test_split] else []
    )
    reports, ref = {}, None
    s = cfg.scaling
    predict = PredictConfig(
        mode="scores",
        batch_size=cfg.train.eval_batch_size,
        num_actors=s.num_workers,
        cpus_per_actor=s.cpus_per_worker,
        use_gpu=s.use_gpu,
    )
    for split in splits:
        name = "valid" if split == d.valid_split else "test"
        F = prepared.info.feature_config.num_mel_bins
        if input_mb(task.rows[split], spec.target_frames, F) <= DRIVER_PREPARE_MB:
            reports[name] = _score_here(
                payload, split_rows(prepared.info, cfg, split), spec, cfg.train.eval_batch_size
            )
            continue
        ref = ref or ray.put(payload)
        rows = PredictInput(raw_split(prepared.info, cfg, split), "rows")
        reports[name] = score_dataset(rows, ref, spec, predict)
    return reports


def _score_here(
    payload: dict, rows, spec: ModelInput, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, K), targets (N, K)) of feature rows, with the model in this process."""
    model = load_checkpoint(payload).eval()
    batches = (
        {k: torch.from_numpy(v) for k, v in spec.prepare(rows.slice(i, batch_size)).items()}
        for i in range(0, rows.num_rows, batch_size)
    )
    return predict_batches(model, batches, torch.device("cpu"))


def final_classifier(checkpoint) -> tuple[SSASTClassifier, dict]:
    """The final model from the last checkpoint: the weight average when
    train.average_from_epoch is set, else the best validation epoch."""
    with checkpoint.as_directory() as d:
        state = load_state(d)
    model = load_checkpoint(state)
    weights = state["avg_state_dict"] if state["avg_count"] else state["best_state_dict"]
    if weights is not None:
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
    return model, state


def _write_outputs(
    output: str, payload: dict, metrics: dict, reports: dict, task: Task, cfg: FinetuneConfig
) -> dict[str, Path]:
    """OUTPUT/{model.pt, metrics.json, config.yaml, <split>_report.txt,
    <split>_confusion.png}; returns the local files (for MLflow)."""
    from jobs.kit.pictures import confusion_figure

    tmp = Path(tempfile.mkdtemp(prefix="finetune-"))
    files = {
        "model.pt": tmp / "model.pt",
        "metrics.json": tmp / "metrics.json",
        "config.yaml": tmp / "config.yaml",
    }
    torch.save(payload, files["model.pt"])
    files["metrics.json"].write_text(json.dumps(_finite(metrics), indent=2))
    files["config.yaml"].write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    names = list(task.labels.class_names)
    for split, (scores, targets) in reports.items():
        rows = per_class_report(scores, targets, names)
        files[f"{split}_report.txt"] = tmp / f"{split}_report.txt"
        files[f"{split}_report.txt"].write_text(format_report(rows) + "\n")
        if not task.labels.multilabel:
            fig = confusion_figure(confusion_matrix(scores, targets), names)
            files[f"{split}_confusion.png"] = tmp / f"{split}_confusion.png"
            fig.savefig(files[f"{split}_confusion.png"], dpi=100)
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    for name, f in files.items():
        fs.put_file(str(f), f"{root}/{name}")
    return files


def _finite(metrics: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


def _log_final(
    uri: str, run_id: str, metrics: dict, files: dict[str, Path], cfg: FinetuneConfig
) -> str | None:
    """Final metrics and files into the run; register the model when asked; end the run."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    final = [
        mlflow.entities.Metric(f"final/{k}", float(v), 0, 0)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(v)
    ]
    client.log_batch(run_id, metrics=final)
    for name, f in files.items():
        client.log_artifact(run_id, str(f), None if name.endswith(".png") else "outputs")
    version = None
    if cfg.mlflow.registered_model:
        version = register_classifier(uri, run_id, files["model.pt"], cfg.mlflow.registered_model)
    end_run(uri, run_id)
    return version


def describe(result: FinetuneResult) -> str:
    m = result.metrics
    shown = "  ".join(
        f"{k} {v:.4f}"
        for k, v in m.items()
        if "/" in k and isinstance(v, float) and math.isfinite(v)
    )
    return "\n".join(
        [
            f"model        {result.output}/model.pt ({m['final']} of {m['epochs']} epochs, "
            f"best epoch {m['best_epoch']})",
            f"metrics      {shown}",
            f"details      {result.output}/metrics.json, *_report.txt, *_confusion.png",
            f"mlflow       run {result.mlflow_run_id} at {result.mlflow_uri}",
            f"open the UI  {ui_command(result.mlflow_uri)}",
        ]
    )
