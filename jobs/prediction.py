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
import pyarrow.compute as pc

from pipeline.batches import Normalization, to_model_input
from pipeline.features import FeatureConfig
from pipeline.schema import NORMALIZATION_PRESETS, load_dataset_info, write_parquet

logger = logging.getLogger(__name__)
ID_COLUMNS = ("path", "clip_id", "segment_index", "start_s", "end_s")
"""Columns copied from the input into every prediction row."""


def encode_labels(values: list, class_names: list[str], multilabel: bool, delimiter: str,
                  column: str = "label") -> np.ndarray:
    """Label column values -> (B, K) float32 multi-hot targets over ``class_names``.

    Raises:
        ValueError: a value names a class that is not in ``class_names``.
    """
    index = {name: k for k, name in enumerate(class_names)}
    out = np.zeros((len(values), len(class_names)), np.float32)
    for i, value in enumerate(values):
        names = split_label(value, multilabel, delimiter)
        for name in names:
            if name not in index:
                raise ValueError(f"{column} value {name!r} is not one of the model's "
                                 f"{len(class_names)} classes {class_names[:10]}")
            out[i, index[name]] = 1.0
    return out


def split_label(value: Any, multilabel: bool, delimiter: str) -> list[str]:
    """One label cell -> its class names (a list cell, or a delimited string)."""
    if value is None:
        return []
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value]
    if multilabel:
        return [v.strip() for v in str(value).split(delimiter) if v.strip()]
    return [str(value)]


def prepare_batch(batch: pa.Table, *, target_frames: int, mean: float, std: float,
                  label_column: str | None = None, class_names: list[str] | None = None,
                  multilabel: bool = False, delimiter: str = ",") -> dict[str, np.ndarray]:
    """Feature rows -> {"fbank": (B, T, F) normalised float32[, "target": (B, K)]}."""
    out = {"fbank": to_model_input(batch, target_frames, Normalization(mean, std))["fbank"]}
    if label_column is not None:
        out["target"] = encode_labels(batch.column(label_column).to_pylist(), class_names,
                                      multilabel, delimiter, label_column)
    return out


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


class Predictor:
    """Ray Data actor: one model, per batch top-k labels / all scores / embeddings.

    Args:
        payload: the checkpoint payload (or an ObjectRef of it).
        mode: "labels" (top_k names and probabilities), "scores" (all logits; with
            ``label_column`` also the targets), "embeddings" (mean-pooled tokens).
        prepare: keyword arguments of :func:`prepare_batch`.
    """

    def __init__(self, payload, mode: str, prepare: dict[str, Any], top_k: int = 5,
                 use_gpu: bool = False, threads: int = 1) -> None:
        import ray
        import torch

        from ssast import load_checkpoint

        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_checkpoint(payload).to(self.device).eval()
        self.mode, self.prepare, self.top_k = mode, prepare, top_k
        self.task = payload.get("task") or {}
        self.width = (self.model.encoder.embed_dim if mode == "embeddings"
                      else getattr(self.model, "num_classes", self.model.encoder.embed_dim))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if "reason" not in batch.column_names:  # a featurized dataset: every row is good
            none = pa.nulls(batch.num_rows, pa.string())
            batch = batch.append_column("reason", none).append_column("detail", none)
        ok = np.asarray(batch.column("reason").is_null())
        out = batch.select([c for c in (*ID_COLUMNS, "reason", "detail")
                            if c in batch.column_names])
        rows = batch.filter(pa.array(ok))
        if rows.num_rows:
            x = prepare_batch(rows, **self.prepare)
            with torch.no_grad():
                fbank = torch.from_numpy(x["fbank"]).to(self.device)
                values = self._forward(fbank).float().cpu().numpy()  # (B_ok, K or D)
            target = x.get("target")
        else:  # every clip of this batch failed: same columns, all null
            values = np.zeros((0, self.width), np.float32)
            target = np.zeros((0, self.width), np.float32)
        if self.prepare.get("label_column") is None:
            target = None
        return _attach(out, ok, self._columns(values, target))

    def _forward(self, fbank):
        if self.mode == "embeddings":
            if hasattr(self.model, "embed"):
                return self.model.embed(fbank)
            return self.model.encode(fbank).mean(dim=1)
        return self.model(fbank)

    def _columns(self, values: np.ndarray, target: np.ndarray | None) -> dict[str, pa.Array]:
        if self.mode == "embeddings":
            return {"embedding": _list_array(values)}
        if self.mode == "scores":
            cols = {"scores": _list_array(values)}
            if target is not None:
                cols["target"] = _list_array(target)
            return cols
        probs = _probabilities(values, bool(self.task.get("multilabel")))
        k = min(self.top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, k)
        names = np.asarray(self.task.get("class_names") or [str(i) for i in
                                                            range(probs.shape[1])])
        return {"top_labels": pa.array(names[top].tolist(), pa.list_(pa.string())),
                "top_scores": _list_array(np.take_along_axis(probs, top, axis=1))}

def _attach(out: pa.Table, ok: np.ndarray, columns: dict[str, pa.Array]) -> pa.Table:
    """Append prediction columns, with nulls on rows that failed featurization."""
    if ok.all():
        for name, col in columns.items():
            out = out.append_column(name, col)
        return out
    where = np.cumsum(ok) - 1  # index among good rows
    for name, col in columns.items():
        if len(col) == 0:
            out = out.append_column(name, pa.nulls(len(ok), col.type))
            continue
        idx = pa.array(np.where(ok, where, 0), pa.int64())
        taken = col.take(idx)
        out = out.append_column(name, pc.if_else(pa.array(ok), taken,
                                                 pa.nulls(len(ok), taken.type)))
    return out


def _list_array(values: np.ndarray) -> pa.Array:
    """(B, K) float -> list<float32> column."""
    values = np.ascontiguousarray(values, np.float32)
    offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


def _probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


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

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1 or self.num_actors < 1:
            raise ValueError("top_k, batch_size and num_actors must be >= 1")


@dataclass(frozen=True)
class PredictSummary:
    output: str
    num_predictions: int
    num_errors: int
    seconds: float


def input_dataset(source: str, columns: list[str] | None = None):
    """(Ray Dataset of feature rows, dataset statistics or None) for a featurized dataset
    directory or a manifest / audio directory (featurized on the fly, errors kept)."""
    import fsspec
    import ray

    fs, p = fsspec.core.url_to_fs(source.rstrip("/") + "/dataset.json")
    if fs.exists(p):
        info = load_dataset_info(source)
        # Ray 2.60's default Parquet reader (datasource V2) starts a pool of footer-reader
        # actors for every read: seconds of fixed cost per prediction job on small
        # clusters. The V1 reader reads footers in its read tasks.
        ctx = ray.data.DataContext.get_current()
        v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
        try:
            ds = ray.data.read_parquet(info.features_dir)
        finally:
            ctx.use_datasource_v2 = v2
        return (ds.select_columns(columns) if columns else ds), (info.mean, info.std)
    from pipeline.featurize import stream_features

    return stream_features(source, FeatureConfig(), keep_errors=True), None


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


def map_predictor(ds, payload_ref, mode: str, prepare: dict, cfg: PredictConfig):
    """``ds`` -> lazily predicted rows (an actor pool of cfg.num_actors models)."""
    import ray

    # One block per model batch: the actors share the work even when the input is a few
    # large Parquet files (a streaming split, not a shuffle).
    return ds.repartition(target_num_rows_per_block=cfg.batch_size).map_batches(
        Predictor, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"payload": payload_ref, "mode": mode, "prepare": prepare,
                               "top_k": cfg.top_k, "use_gpu": cfg.use_gpu,
                               "threads": max(1, int(cfg.cpus_per_actor))},
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
    ds, stats = input_dataset(source)
    mean, std = normalization_for(cfg.normalization, info.task, stats)
    prepare = {"target_frames": info.input_tdim, "mean": mean, "std": std}
    out = map_predictor(ds, ray.put(payload), cfg.mode, prepare, cfg).materialize()
    output = output if "://" in output else os.path.abspath(output)
    good = out.filter(expr=col("reason").is_null()).drop_columns(["reason", "detail"])
    good.write_parquet(f"{output}/predictions")
    bad = out.filter(expr=col("reason").is_not_null()).select_columns(
        ["path", "reason", "detail"])
    errors = _collect(bad, pa.schema([(c, pa.string()) for c in ("path", "reason", "detail")]))
    write_parquet(errors, f"{output}/errors/part-000000.parquet")
    return PredictSummary(output, good.count(), errors.num_rows, time.perf_counter() - start)


def _collect(ds, schema: pa.Schema) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


def score_dataset(ds, payload_ref, prepare: dict, cfg: PredictConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, K), targets (N, K)) of a labelled dataset, on an actor pool."""
    out = map_predictor(ds, payload_ref, "scores", prepare, cfg).select_columns(
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
    from ray.data.expressions import col

    from jobs.metrics import format_report, per_class_report, summary

    payload, info = read_model(model)
    if info.kind != "classifier" or not info.task:
        raise ValueError(f"{model} is not a fine-tuned model (jobs/finetune.py's model.pt): "
                         "nothing to evaluate")
    task = info.task
    columns = ["fbank", "num_frames", "num_mel_bins", task["label_column"]]
    ds, stats = input_dataset(data, columns + ([split_column] if split else []))
    if stats is None:
        raise ValueError(f"{data} is not a featurized dataset (no dataset.json); featurize "
                         "it with jobs/featurize.py first")
    if split:
        ds = ds.filter(expr=col(split_column) == split)
    mean, std = normalization_for(cfg.normalization, task, stats)
    prepare = {"target_frames": info.input_tdim, "mean": mean, "std": std,
               "label_column": task["label_column"], "class_names": task["class_names"],
               "multilabel": task["multilabel"], "delimiter": task["label_delimiter"]}
    scores, targets = score_dataset(ds, ray.put(payload), prepare, cfg)
    if len(scores) == 0:
        raise ValueError(f"{data}: no rows with {split_column} == {split!r}")
    report = format_report(per_class_report(scores, targets, task["class_names"]))
    return summary(scores, targets, split or "all"), report
