"""Driver side of fine-tuning: labels and splits, the initial model, the Ray Train run,
final model selection, test scores, outputs and MLflow."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq
import torch
import yaml

from jobs.finetune_config import FinetuneConfig
from jobs.finetune_loop import STATE_FILE, train_loop_per_worker
from jobs.metrics import confusion_matrix, format_report, per_class_report, summary
from jobs.prediction import PredictConfig, PredictInput, score_dataset
from jobs.predictor import prepare_batch, split_label
from jobs.tracking import default_tracking_uri, register_classifier, start_run
from pipeline.batches import MODEL_INPUT_COLUMNS
from pipeline.config import flatten, to_dict
from pipeline.schema import NORMALIZATION_PRESETS, DatasetInfo, load_dataset_info
from ssast import SSAST, SSASTClassifier, load_checkpoint
from ssast.checkpoint import checkpoint_payload

logger = logging.getLogger("finetune")


@dataclass(frozen=True)
class FinetuneResult:
    output: str
    metrics: dict[str, Any]
    mlflow_uri: str
    mlflow_run_id: str
    model_version: str | None


# ------------------------------------------------------------------- the task
def read_task(info: DatasetInfo, cfg: FinetuneConfig) -> dict[str, Any]:
    """Class names (sorted, from every split), row counts per split, loss and metric.

    Raises:
        ValueError: the label or split column is missing, or the train / valid split is
            empty.
    """
    d = cfg.data
    fs, root = fsspec.core.url_to_fs(info.features_dir)
    schema = pq.read_schema(fs.open(sorted(fs.glob(f"{root}/*.parquet"))[0]))
    for name, key in ((d.label_column, "data.label_column"), (d.split_column,
                                                             "data.split_column")):
        if name not in schema.names:
            raise ValueError(f"{info.root}: no column {name!r} ({key}); the features have "
                             f"{[c for c in schema.names if c != 'fbank']}")
    table = pq.read_table(root, filesystem=fs, columns=[d.label_column, d.split_column])
    labels, splits = table.column(0).to_pylist(), table.column(1).to_pylist()
    names = sorted({n for v in labels for n in split_label(v, d.multilabel, d.label_delimiter)})
    counts = {s: sum(1 for x in splits if x == s) for s in (d.train_split, d.valid_split,
                                                            d.test_split)}
    if d.limit is not None:
        counts = {s: min(n, d.limit) for s, n in counts.items()}
    for split in (d.train_split, d.valid_split):
        if counts[split] == 0:
            raise ValueError(f"{info.root}: no rows with {d.split_column} == {split!r}; "
                             f"found {sorted({str(s) for s in splits})}; set data.train_split "
                             "/ data.valid_split or add the split to the manifest")
    if len(names) < 2:
        raise ValueError(f"{info.root}: column {d.label_column!r} has {len(names)} class(es) "
                         f"{names}; a classifier needs at least 2")
    mean, std = _statistics(d.normalization, info)
    return {"class_names": names, "multilabel": d.multilabel, "label_column": d.label_column,
            "label_delimiter": d.label_delimiter, "normalization": [mean, std],
            "loss": cfg.train.loss if cfg.train.loss != "auto" else
            ("bce" if d.multilabel else "ce"),
            "metric": cfg.train.metric if cfg.train.metric != "auto" else
            ("mAP" if d.multilabel else "accuracy"),
            "fill": (0.0 - mean) / (2 * std), "rows": counts,
            "train_rows": counts[d.train_split]}


def _statistics(name: str, info: DatasetInfo) -> tuple[float, float]:
    if name == "dataset":
        return info.mean, info.std
    if name not in NORMALIZATION_PRESETS:
        raise ValueError(f"data.normalization must be 'dataset' or one of "
                         f"{sorted(NORMALIZATION_PRESETS)}, got {name!r}")
    return NORMALIZATION_PRESETS[name]


def prepare_kwargs(task: dict, input_tdim: int) -> dict[str, Any]:
    mean, std = task["normalization"]
    return {"target_frames": input_tdim, "mean": mean, "std": std,
            "label_column": task["label_column"], "class_names": task["class_names"],
            "multilabel": task["multilabel"], "delimiter": task["label_delimiter"]}


def raw_split(info: DatasetInfo, cfg: FinetuneConfig, split: str):
    """Ray Dataset of the feature rows of one split (fbank, label and split columns)."""
    import ray
    from ray.data.expressions import col

    d = cfg.data
    ds = ray.data.read_parquet(info.features_dir).select_columns(
        [*MODEL_INPUT_COLUMNS, d.label_column, d.split_column])
    ds = ds.filter(expr=col(d.split_column) == split)
    return ds.limit(d.limit) if d.limit is not None else ds


def split_dataset(info: DatasetInfo, cfg: FinetuneConfig, split: str, prepare: dict,
                  num_rows: int):
    """Ray Dataset of {"fbank", "target"} rows of one split; materialized when small."""
    ds = raw_split(info, cfg, split).map_batches(prepare_batch, batch_format="pyarrow",
                                                 batch_size=32, fn_kwargs=prepare)
    size_mb = num_rows * prepare["target_frames"] * info.feature_config.num_mel_bins * 4 / 2**20
    return ds.materialize() if size_mb <= cfg.data.cache_mb else ds


# ------------------------------------------------------------ initial model
def initial_model(init: str, cfg: FinetuneConfig, num_mel_bins: int, num_classes: int
                  ) -> SSASTClassifier:
    """The classifier to fine-tune: random (scratch), or an encoder from a checkpoint
    adapted to the fine-tuning stride and length (positions cropped / resized as the
    original does) with a new head."""
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    if init == "scratch":
        return SSASTClassifier(m.ssast_config(num_mel_bins), num_classes, m.pooling)
    model = load_checkpoint(read_checkpoint(init))
    if isinstance(model, SSASTClassifier):  # continue from a fine-tuned model's encoder
        model = _classifier_encoder(model, init)
    logger.info("init %s: %s %s, patch %s; model.size / model.geometry are ignored", init,
                model.cfg.size, "patches" if model.cfg.patch_shape[0] < model.cfg.input_fdim
                else "frames", model.cfg.patch_shape)
    stride = m.patch_stride or model.cfg.patch_shape
    adapted = model.adapted(patch_stride=stride, input_fdim=num_mel_bins,
                            input_tdim=m.input_tdim)
    return SSASTClassifier.from_pretrained(adapted, num_classes, m.pooling)


def _classifier_encoder(clf: SSASTClassifier, init: str) -> SSAST:
    """A fine-tuned classifier's encoder as a pretraining-geometry model (its positions
    resized back is not exact, so the stride must be the patch shape)."""
    if clf.cfg.patch_stride != clf.cfg.patch_shape:
        raise ValueError(f"{init} is a classifier with overlapping patches (stride "
                         f"{clf.cfg.patch_stride}); start from its pretrained checkpoint")
    model = SSAST(clf.cfg.replace(num_masked=1))
    model.encoder.load_state_dict(clf.encoder.state_dict())
    return model


def read_checkpoint(init: str) -> dict[str, Any]:
    """Load a checkpoint file (local or s3://), a directory holding one (a pretraining
    output: final/ssast.pt), or an MLflow runs:/ or models:/ URI, weights only."""
    if init.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=init, dst_path=tmp)
            return _load(_find_checkpoint(local, init))
    fs, path = fsspec.core.url_to_fs(init)
    if not fs.exists(path):
        raise ValueError(f"--init {init}: no such file or directory; give 'scratch', a "
                         "checkpoint, a pretraining output directory or an MLflow URI")
    if fs.isdir(path):
        for name in ("final/ssast.pt", "ssast.pt", "model.pt"):
            if fs.exists(f"{path}/{name}"):
                return read_checkpoint(init.rstrip("/") + "/" + name)
        raise ValueError(f"--init {init}: a directory without final/ssast.pt, ssast.pt or "
                         "model.pt")
    with fs.open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _find_checkpoint(local: str, uri: str) -> str:
    p = Path(local)
    if p.is_file():
        return str(p)
    found = sorted(p.rglob("*.pt")) + sorted(p.rglob("*.pth"))
    if not found:
        raise ValueError(f"{uri} holds no .pt / .pth checkpoint")
    return str(found[0])


def _load(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------- the run
@dataclass(frozen=True)
class PreparedData:
    """What every run on one dataset, length and label set shares: the dataset's
    description, the task and the model-ready train / valid splits (Ray Datasets,
    materialized in the object store when small)."""
    info: DatasetInfo
    task: dict[str, Any]
    prepare: dict[str, Any]
    datasets: dict[str, Any]


def prepare_data(data: str, cfg: FinetuneConfig) -> PreparedData:
    """Read the task and prepare the train / valid splits for ``cfg.model.input_tdim``."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    info = load_dataset_info(data)
    task = read_task(info, cfg)
    prepare = prepare_kwargs(task, cfg.model.input_tdim)
    d = cfg.data
    datasets = {name: split_dataset(info, cfg, split, prepare, task["rows"][split])
                for name, split in (("train", d.train_split), ("valid", d.valid_split))}
    return PreparedData(info, task, prepare, datasets)


def run_finetuning(data: str, output: str, cfg: FinetuneConfig, *,
                   prepared: PreparedData | None = None, parent_run_id: str | None = None,
                   score_final: bool = True, callbacks: list | None = None) -> FinetuneResult:
    """Fine-tune on Ray Train; resumes when ``output/cfg.name`` has checkpoints.

    Writes OUTPUT/model.pt (the final classifier, with its task) and OUTPUT/metrics.json.
    ``prepared`` reuses splits prepared by :func:`prepare_data` (Tune trials share them);
    ``parent_run_id`` nests the MLflow run; ``score_final=False`` skips scoring the final
    model on the test split (and the weight average on the valid split); ``callbacks`` go
    to Ray Train.
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    output = output if "://" in output else os.path.abspath(output)
    prepared = prepared or prepare_data(data, cfg)
    info, task, prepare = prepared.info, prepared.task, prepared.prepare
    if prepare["target_frames"] != cfg.model.input_tdim:
        raise ValueError(f"prepared data has {prepare['target_frames']} frames, the config "
                         f"model.input_tdim={cfg.model.input_tdim}")
    clf = initial_model(cfg.init, cfg, info.feature_config.num_mel_bins,
                        len(task["class_names"]))
    d = cfg.data
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    params = flatten(to_dict(cfg)) | {"data": data, "output": output,
                                      "num_classes": len(task["class_names"]),
                                      "norm.mean": task["normalization"][0],
                                      "norm.std": task["normalization"][1]}
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
    run_id = start_run(uri, cfg.mlflow.experiment, cfg.name, f"{output}/{cfg.name}", params,
                       tags=tags)
    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "task": task,
                           "init": ray.put(checkpoint_payload(clf)),
                           "mlflow": {"uri": uri, "run_id": run_id}},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker,
                                                           **s.worker_resources}),
        run_config=RunConfig(name=cfg.name, storage_path=output,
                             failure_config=FailureConfig(max_failures=s.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.train.keep_checkpoints),
                             callbacks=callbacks or []),
        datasets=prepared.datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    final, state = final_classifier(result.checkpoint, cfg)
    payload = checkpoint_payload(final, extra={"task": public_task(task), "epoch": state["epoch"]})
    metrics = {"epochs": state["epoch"], "best_epoch": state["best_epoch"],
               f"valid/{task['metric']}": state["best_metric"],
               "final": "average" if state["avg_count"] else "best"}
    ref, reports = ray.put(payload), {}
    splits = ([d.valid_split] if state["avg_count"] else []) + \
        ([d.test_split] if task["rows"][d.test_split] else [])
    for split in splits if score_final else []:  # the average was never validated
        name = "valid" if split == d.valid_split else "test"
        rows = PredictInput(raw_split(info, cfg, split), "rows", None)
        scores, targets = score_dataset(rows, ref, prepare,
                                        _eval_predict_config(cfg))
        metrics |= summary(scores, targets, name)
        reports[name] = (scores, targets)
    files = _write_outputs(output, payload, metrics, reports, task, cfg)
    try:
        version = _log_final(uri, run_id, metrics, files, cfg)
    finally:
        shutil.rmtree(next(iter(files.values())).parent, ignore_errors=True)
    return FinetuneResult(output, metrics, uri, run_id, version)


def final_classifier(checkpoint, cfg: FinetuneConfig) -> tuple[SSASTClassifier, dict]:
    """The final model from the last checkpoint: the weight average when
    train.average_from_epoch is set, else the best validation epoch."""
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    model = load_checkpoint(state)
    weights = state["avg_state_dict"] if state["avg_count"] else state["best_state_dict"]
    if weights is not None:
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
    return model, state


def _eval_predict_config(cfg: FinetuneConfig) -> PredictConfig:
    s = cfg.scaling
    return PredictConfig(mode="scores", batch_size=cfg.train.eval_batch_size,
                         num_actors=s.num_workers, cpus_per_actor=s.cpus_per_worker,
                         use_gpu=s.use_gpu)


def public_task(task: dict) -> dict:
    """The task description saved with the model (what prediction needs)."""
    keys = ("class_names", "multilabel", "label_column", "label_delimiter", "normalization",
            "loss", "metric")
    return {k: task[k] for k in keys}


def _write_outputs(output: str, payload: dict, metrics: dict, reports: dict, task: dict,
                   cfg: FinetuneConfig) -> dict[str, Path]:
    """OUTPUT/{model.pt, metrics.json, config.yaml, <split>_report.txt,
    <split>_confusion.png}; returns the local files (for MLflow)."""
    from jobs.pictures import confusion_figure

    tmp = Path(tempfile.mkdtemp(prefix="finetune-"))
    files = {"model.pt": tmp / "model.pt", "metrics.json": tmp / "metrics.json",
             "config.yaml": tmp / "config.yaml"}
    torch.save(payload, files["model.pt"])
    files["metrics.json"].write_text(json.dumps(_finite(metrics), indent=2))
    files["config.yaml"].write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    names = task["class_names"]
    for split, (scores, targets) in reports.items():
        rows = per_class_report(scores, targets, names)
        files[f"{split}_report.txt"] = tmp / f"{split}_report.txt"
        files[f"{split}_report.txt"].write_text(format_report(rows) + "\n")
        if not task["multilabel"]:
            fig = confusion_figure(confusion_matrix(scores, targets), names)
            files[f"{split}_confusion.png"] = tmp / f"{split}_confusion.png"
            fig.savefig(files[f"{split}_confusion.png"], dpi=100)
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    for name, f in files.items():
        fs.put_file(str(f), f"{root}/{name}")
    return files


def _finite(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


def _log_final(uri: str, run_id: str, metrics: dict, files: dict[str, Path],
               cfg: FinetuneConfig) -> str | None:
    """Final metrics and files into the run; register the model when asked; end the run."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    final = [mlflow.entities.Metric(f"final/{k}", float(v), 0, 0) for k, v in metrics.items()
             if isinstance(v, int | float) and math.isfinite(v)]
    client.log_batch(run_id, metrics=final)
    for name, f in files.items():
        client.log_artifact(run_id, str(f), None if name.endswith(".png") else "outputs")
    version = None
    if cfg.mlflow.registered_model:
        version = register_classifier(uri, run_id, files["model.pt"], cfg.mlflow.registered_model)
    client.set_terminated(run_id, status="FINISHED")
    return version


def describe(result: FinetuneResult) -> str:
    from jobs.tracking import ui_command

    m = result.metrics
    shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items()
                      if "/" in k and isinstance(v, float) and math.isfinite(v))
    return "\n".join([
        f"model        {result.output}/model.pt ({m['final']} of {m['epochs']} epochs, "
        f"best epoch {m['best_epoch']})",
        f"metrics      {shown}",
        f"details      {result.output}/metrics.json, *_report.txt, *_confusion.png",
        f"mlflow       run {result.mlflow_run_id} at {result.mlflow_uri}",
        f"open the UI  {ui_command(result.mlflow_uri)}",
    ])
