"""Batch inference with Ray Data: one model per actor, top-k labels, scores or embeddings.

Shared by jobs/predict.py, jobs/evaluate.py and the end of fine-tuning.

A fine-tuned checkpoint (jobs/finetune.py's model.pt) carries its ``task``: class names,
normalisation, label column; a pretrained encoder (ours or a released SSAST .pth) only
gives embeddings and takes its normalisation from the data or a preset.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from jobs.predictor import ID_COLUMNS, Predictor
from pipeline.batches import MODEL_INPUT_COLUMNS
from pipeline.features import FeatureConfig
from pipeline.schema import NORMALIZATION_PRESETS, load_dataset_info, write_parquet

logger = logging.getLogger(__name__)
ROWS_PER_FILE = 20_000
"""Prediction rows per output Parquet file (at least; the last file may hold fewer)."""


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a checkpoint, read once on the driver."""

    kind: Literal["classifier", "pretrain"]
    input_tdim: int
    task: dict[str, Any] | None
    """Fine-tuned checkpoints: class_names, multilabel, label_column, label_delimiter,
    normalization [mean, std]."""


def read_model(path: str) -> tuple[dict[str, Any], ModelInfo]:
    """(checkpoint payload, info) of our checkpoint or a released SSAST .pth.

    The payload is what :func:`ssast.load_checkpoint` takes (ray.put it for actors).
    Loading it here validates the file before any worker starts.
    """
    import fsspec
    import torch

    from ssast import SSASTClassifier, load_checkpoint

    with fsspec.open(path, "rb") as f:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    model = load_checkpoint(payload)
    if not isinstance(model, SSASTClassifier):
        # Normalise a released file into our format so actors need no conversion.
        from ssast.checkpoint import checkpoint_payload

        payload = checkpoint_payload(model)
    kind = "classifier" if isinstance(model, SSASTClassifier) else "pretrain"
    return payload, ModelInfo(kind, model.cfg.input_tdim, payload.get("task"))


# ------------------------------------------------------------------- driver side
@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    mode: Literal["labels", "scores", "embeddings"] = "labels"
    """labels: top-k class names and probabilities; scores: every logit; embeddings: the
    mean-pooled patch tokens (any checkpoint, also a pretrained encoder)."""
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
    """'model' (the statistics a fine-tuned checkpoint was trained with), 'dataset'
    (dataset.json of a featurized input) or a preset: audioset, esc50, speechcommands."""
    featurize_in: Literal["auto", "actors", "tasks"] = "auto"
    """Audio input: decode and featurize in the model actors (each clip stays in one
    process; fastest on CPUs), in separate Ray Data tasks feeding the actors (many CPUs
    keep GPUs busy), or auto: actors on CPU, tasks with use_gpu."""

    @property
    def featurize_in_actors(self) -> bool:
        return self.featurize_in == "actors" or (self.featurize_in == "auto"
                                                  and not self.use_gpu)

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1 or self.num_actors < 1:
            raise ValueError("top_k, batch_size and num_actors must be >= 1")


@dataclass(frozen=True)
class PredictSummary:
    output: str
    num_predictions: int
    num_errors: int
    seconds: float


@dataclass(frozen=True)
class PredictInput:
    """What the prediction actors are fed, and how (see :class:`jobs.predictor.Predictor`)."""

    ds: Any
    """Ray Dataset: feature shard URIs, manifest rows, or feature rows."""
    source: Literal["files", "audio", "rows"]
    stats: tuple[float, float] | None
    """(mean, std) of a featurized dataset; None for audio."""
    features: FeatureConfig | None = None
    """Audio in the actors: how they featurize it."""


def input_dataset(source: str, featurize_in_actors: bool = True, rows_per_block: int = 32
                  ) -> PredictInput:
    """What to feed the actors for ``source``: a featurized dataset directory (its shard
    files, which the actors read) or a manifest / audio directory (its rows, which the
    actors featurize; or, without ``featurize_in_actors``, feature rows computed by Ray
    Data tasks with errors kept as rows)."""
    import fsspec
    import ray

    fs, p = fsspec.core.url_to_fs(source.rstrip("/") + "/dataset.json")
    if fs.exists(p):
        info = load_dataset_info(source)
        fs, root = fsspec.core.url_to_fs(info.features_dir)
        files = sorted(fs.glob(f"{root}/*.parquet"))
        if not files:
            raise ValueError(f"{info.features_dir} holds no Parquet shards; featurize again")
        uris = [fs.unstrip_protocol(f) if "://" in source else f for f in files]
        ds = ray.data.from_items([{"file": u} for u in uris], override_num_blocks=len(uris))
        return PredictInput(ds, "files", (info.mean, info.std))
    from pipeline.featurize import stream_features
    from pipeline.manifest import read_manifest

    manifest = read_manifest(source)
    if not featurize_in_actors:
        return PredictInput(stream_features(manifest, FeatureConfig(), keep_errors=True),
                            "rows", None)
    # Bounded block count: millions of rows go in blocks of a multiple of a model batch.
    step = rows_per_block * max(1, -(-manifest.num_rows // (rows_per_block * 4096)))
    blocks = [manifest.slice(k, step) for k in range(0, manifest.num_rows, step)]
    return PredictInput(ray.data.from_arrow(blocks or manifest), "audio", None,
                        FeatureConfig())


def normalization_for(name: str, task: dict | None, stats: tuple[float, float] | None
                      ) -> tuple[float, float]:
    """(mean, std) by PredictConfig.normalization's rule."""
    if name == "model":
        if task and task.get("normalization"):
            return tuple(task["normalization"])
        if stats is not None:
            return stats
        logger.warning("the model carries no statistics and the input has none; using the "
                       "AudioSet preset (set normalization=... to choose)")
        return NORMALIZATION_PRESETS["audioset"]
    if name == "dataset":
        if stats is None:
            raise ValueError("normalization=dataset needs a featurized dataset as input")
        return stats
    if name not in NORMALIZATION_PRESETS:
        raise ValueError(f"normalization must be model, dataset or one of "
                         f"{sorted(NORMALIZATION_PRESETS)}, got {name!r}")
    return NORMALIZATION_PRESETS[name]


def map_predictor(given: PredictInput, payload_ref, mode: str, prepare: dict,
                  cfg: PredictConfig, where: tuple[str, Any] | None = None):
    """Lazily predicted rows of ``given`` (an actor pool of cfg.num_actors models).

    ``where=(column, value)``: only the feature rows whose column equals value (a split).
    """
    import ray

    ds, batch_size, read = given.ds, cfg.batch_size, None
    if given.source == "files":
        batch_size = 1  # one shard per call; the actor predicts it in model batches
        columns = [*ID_COLUMNS, *MODEL_INPUT_COLUMNS, prepare.get("label_column")]
        read = {"columns": list(dict.fromkeys(c for c in columns if c)), "where": where,
                "batch_size": cfg.batch_size}
    elif given.source == "rows":
        # One block per model batch, so that every actor gets work (a streaming split).
        ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    return ds.map_batches(
        Predictor, batch_format="pyarrow", batch_size=batch_size,
        fn_constructor_kwargs={"payload": payload_ref, "mode": mode, "prepare": prepare,
                               "top_k": cfg.top_k, "use_gpu": cfg.use_gpu,
                               "threads": max(1, int(cfg.cpus_per_actor)),
                               "source": given.source, "features": given.features,
                               "read": read},
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=1 if cfg.use_gpu else 0,
    )


def run_prediction(model: str, source: str, output: str, cfg: PredictConfig
                   ) -> PredictSummary:
    """Predict over every clip of ``source``; write OUTPUT/predictions/*.parquet and
    OUTPUT/errors/part-000000.parquet (clips that could not be featurized)."""
    import time

    import ray
    from ray.data.expressions import col

    start = time.perf_counter()
    payload, info = read_model(model)
    if info.kind == "pretrain" and cfg.mode != "embeddings":
        raise ValueError(f"{model} is a pretrained encoder without a classification head: "
                         "use mode=embeddings, or fine-tune it first (jobs/finetune.py)")
    given = input_dataset(source, cfg.featurize_in_actors, rows_per_block=cfg.batch_size)
    mean, std = normalization_for(cfg.normalization, info.task, given.stats)
    prepare = {"target_frames": info.input_tdim, "mean": mean, "std": std}
    out = map_predictor(given, ray.put(payload), cfg.mode, prepare, cfg).materialize()
    output = output if "://" in output else os.path.abspath(output)
    good = out.filter(expr=col("reason").is_null()).drop_columns(["reason", "detail"])
    # Files of many model batches, not one small file (and one write task) per batch.
    good.write_parquet(f"{output}/predictions", min_rows_per_file=ROWS_PER_FILE)
    bad = out.filter(expr=col("reason").is_not_null()).select_columns(
        ["path", "reason", "detail"])
    errors = _collect(bad, pa.schema([(c, pa.string()) for c in ("path", "reason", "detail")]))
    write_parquet(errors, f"{output}/errors/part-000000.parquet")
    return PredictSummary(output, out.count() - errors.num_rows, errors.num_rows,
                          time.perf_counter() - start)


def _collect(ds, schema: pa.Schema) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


def score_dataset(given: PredictInput, payload_ref, prepare: dict, cfg: PredictConfig,
                  where: tuple[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, K), targets (N, K)) of labelled feature rows, on an actor pool."""
    out = map_predictor(given, payload_ref, "scores", prepare, cfg, where).select_columns(
        ["scores", "target"])
    table = _collect(out, pa.schema([("scores", pa.list_(pa.float32())),
                                     ("target", pa.list_(pa.float32()))]))
    K = len(prepare["class_names"])
    return (_matrix(table.column("scores"), K), _matrix(table.column("target"), K))


def _matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, width).astype(np.float32)


def evaluate_checkpoint(model: str, data: str, split: str | None, cfg: PredictConfig,
                        split_column: str = "split") -> tuple[dict[str, float], str]:
    """Score a fine-tuned model.pt on a featurized dataset (one split, or all rows).

    Returns:
        ({split/accuracy, split/mAP, split/AUC}, the per-class report as text).
    """
    import ray

    from jobs.metrics import format_report, per_class_report, summary

    payload, info = read_model(model)
    if info.kind != "classifier" or not info.task:
        raise ValueError(f"{model} is not a fine-tuned model (jobs/finetune.py's model.pt): "
                         "nothing to evaluate")
    task = info.task
    given = input_dataset(data)
    if given.source != "files":
        raise ValueError(f"{data} is not a featurized dataset (no dataset.json); featurize "
                         "it with jobs/featurize.py first")
    mean, std = normalization_for(cfg.normalization, task, given.stats)
    prepare = {"target_frames": info.input_tdim, "mean": mean, "std": std,
               "label_column": task["label_column"], "class_names": task["class_names"],
               "multilabel": task["multilabel"], "delimiter": task["label_delimiter"]}
    where = (split_column, split) if split else None
    scores, targets = score_dataset(given, ray.put(payload), prepare, cfg, where)
    if len(scores) == 0:
        raise ValueError(f"{data}: no rows with {split_column} == {split!r}")
    report = format_report(per_class_report(scores, targets, task["class_names"]))
    return summary(scores, targets, split or "all"), report
