"""Batch inference with Ray Data: one model per actor, top-k labels, scores or embeddings.

Shared by jobs/predict.py, jobs/evaluate.py and the end of fine-tuning.

Every model carries its feature contract (jobs/kit/models.py): raw audio is featurized
with the model's own settings, and a featurized dataset made with other settings is
refused. A fine-tuned model also carries its classes and normalisation; a pretrained
encoder (ours or a released SSAST .pth) only gives embeddings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from jobs.inference.config import PredictConfig
from jobs.inference.predictor import ID_COLUMNS, Predictor
from jobs.kit.datasets import shard_files
from jobs.kit.metrics import format_report, per_class_report, summary
from jobs.kit.models import ModelFile, check_features, read_model
from pipeline.batches import MODEL_INPUT_COLUMNS, ModelInput
from pipeline.features import FeatureConfig
from pipeline.normalization import Normalization, choose_normalization
from pipeline.schema import load_dataset_info
from pipeline.storage import OutputLock, absolute, exists, write_parquet

logger = logging.getLogger(__name__)
ROWS_PER_FILE = 20_000
"""Prediction rows per output Parquet file (at least; the last file may hold fewer)."""


@dataclass(frozen=True)
class PredictSummary:
    output: str
    num_predictions: int
    num_errors: int
    seconds: float


@dataclass(frozen=True)
class PredictInput:
    """What the prediction actors are fed, and how (see :class:`Predictor`)."""

    ds: Any
    """Ray Dataset: feature shard URIs, manifest rows, or feature rows."""
    source: Literal["files", "audio", "rows"]
    stats: Normalization | None = None
    """The statistics of a featurized dataset; None for audio."""
    features: FeatureConfig | None = None
    """Audio in the actors: how they featurize it."""


def input_dataset(
    source: str,
    features: FeatureConfig,
    featurize_in_actors: bool = True,
    rows_per_block: int = 32,
    model: ModelFile | None = None,
) -> PredictInput:
    """What to feed the actors for ``source``: a featurized dataset directory (its shard
    files, which the actors read) or a manifest / audio directory (its rows, which the
    actors featurize with ``features``; or, without ``featurize_in_actors``, feature rows
    computed by Ray Data tasks with errors kept as rows).

    Raises:
        ValueError: a featurized dataset made with other settings than ``model``'s.
    """
    import ray

    if exists(source.rstrip("/") + "/dataset.json"):
        info = load_dataset_info(source)
        if model is not None:
            check_features(model, info.feature_config, source)
        uris = shard_files(info.features_dir)
        ds = ray.data.from_items([{"file": u} for u in uris], override_num_blocks=len(uris))
        return PredictInput(ds, "files", info.statistics)
    from pipeline.featurize import stream_features
    from pipeline.manifest import read_manifest

    manifest = read_manifest(source)
    if not featurize_in_actors:
        return PredictInput(stream_features(manifest, features, keep_errors=True), "rows")
    # Bounded block count: millions of rows go in blocks of a multiple of a model batch.
    step = rows_per_block * max(1, -(-manifest.num_rows // (rows_per_block * 4096)))
    blocks = [manifest.slice(k, step) for k in range(0, manifest.num_rows, step)]
    return PredictInput(ray.data.from_arrow(blocks or manifest), "audio", None, features)


def map_predictor(
    given: PredictInput,
    payload_ref,
    mode: str,
    spec: ModelInput,
    cfg: PredictConfig,
    where: tuple[str, Any] | None = None,
    hop: int | None = None,
    frame_shift_s: float = 0.01,
):
    """Lazily predicted rows of ``given`` (an actor pool of cfg.num_actors models).

    ``where=(column, value)``: only the feature rows whose column equals value (a split).
    ``hop``: window long clips (see :class:`Predictor`); None: their first frames only.
    ``frame_shift_s``: the model's frame shift (window times).
    """
    import ray

    if where is not None and given.source != "files":
        raise ValueError(
            f"selecting rows by {where[0]} needs feature shards, not {given.source} input"
        )
    ds, batch_size, read = given.ds, cfg.batch_size, None
    if given.source == "files":
        batch_size = 1  # one shard per call; the actor predicts it in model batches
        label = spec.labels.column if spec.labels else None
        columns = [*ID_COLUMNS, *MODEL_INPUT_COLUMNS, label]
        read = {
            "columns": list(dict.fromkeys(c for c in columns if c)),
            "where": where,
            "batch_size": cfg.batch_size,
        }
    elif given.source == "rows":
        # One block per model batch, so that every actor gets work (a streaming split).
        ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    return ds.map_batches(
        Predictor,
        batch_format="pyarrow",
        batch_size=batch_size,
        fn_constructor_kwargs={
            "payload": payload_ref,
            "mode": mode,
            "spec": spec,
            "top_k": cfg.top_k,
            "use_gpu": cfg.use_gpu,
            "threads": max(1, int(cfg.cpus_per_actor)),
            "source": given.source,
            "features": given.features,
            "read": read,
            "hop": hop,
            "frame_shift_s": frame_shift_s,
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=1 if cfg.use_gpu else 0,
    )


def run_prediction(model: str, source: str, output: str, cfg: PredictConfig) -> PredictSummary:
    """Predict over every clip of ``source``; write OUTPUT/predictions/*.parquet and
    OUTPUT/errors/part-000000.parquet (clips that could not be featurized).

    Raises:
        OutputBusyError: another job is writing ``output`` (refused before any work).
    """
    output = absolute(output)
    with OutputLock(output):
        return _predict(model, source, output, cfg)


def _predict(model: str, source: str, output: str, cfg: PredictConfig) -> PredictSummary:
    import ray
    from ray.data.expressions import col

    start = time.perf_counter()
    found = read_model(model)
    if found.kind == "pretrain" and cfg.mode not in ("embeddings", "timestamps"):
        raise ValueError(
            f"{model} is a pretrained encoder without a classification head: "
            "use mode=embeddings (or timestamps), or fine-tune it first (jobs/finetune.py)"
        )
    given = input_dataset(
        source, found.features, cfg.featurize_in_actors, rows_per_block=cfg.batch_size, model=found
    )
    norm = choose_normalization(cfg.normalization, model=found.normalization, dataset=given.stats)
    T = found.model.cfg.input_tdim
    spec = ModelInput(T, norm)
    hop = cfg.hop(T)
    shift = found.features.frame_shift_ms / 1000
    out = map_predictor(given, ray.put(found.payload), cfg.mode, spec, cfg, None, hop, shift)
    out = out.materialize()
    good = out.filter(expr=col("reason").is_null()).drop_columns(["reason", "detail"])
    # Files of many model batches, not one small file (and one write task) per batch.
    good.write_parquet(f"{output}/predictions", min_rows_per_file=ROWS_PER_FILE)
    bad = out.filter(expr=col("reason").is_not_null()).select_columns(["path", "reason", "detail"])
    errors = _collect(bad, pa.schema([(c, pa.string()) for c in ("path", "reason", "detail")]))
    write_parquet(errors, f"{output}/errors/part-000000.parquet")
    return PredictSummary(
        output, out.count() - errors.num_rows, errors.num_rows, time.perf_counter() - start
    )


def _collect(ds, schema: pa.Schema) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


def score_dataset(
    given: PredictInput,
    payload_ref,
    spec: ModelInput,
    cfg: PredictConfig,
    where: tuple[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, K), targets (N, K)) of labelled feature rows, on an actor pool."""
    out = map_predictor(given, payload_ref, "scores", spec, cfg, where).select_columns(
        ["scores", "target"]
    )
    table = _collect(
        out, pa.schema([("scores", pa.list_(pa.float32())), ("target", pa.list_(pa.float32()))])
    )
    K = len(spec.labels.class_names)
    return (_matrix(table.column("scores"), K), _matrix(table.column("target"), K))


def _matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, width).astype(np.float32)


def evaluate_checkpoint(
    model: str, data: str, split: str | None, cfg: PredictConfig, split_column: str = "split"
) -> tuple[dict[str, float], str]:
    """Score a fine-tuned classifier on a featurized dataset (one split, or all rows).

    Returns:
        ({split/accuracy, split/mAP, split/AUC}, the per-class report as text).
    """
    import ray

    found = read_model(model)
    if found.kind != "classifier" or found.labels is None:
        raise ValueError(
            f"{model} is not a fine-tuned model (jobs/finetune.py's model.pt): nothing to evaluate"
        )
    if not exists(data.rstrip("/") + "/dataset.json"):
        raise ValueError(
            f"{data} is not a featurized dataset (no dataset.json); featurize "
            "it with jobs/featurize.py first"
        )
    given = input_dataset(data, found.features, model=found)
    norm = choose_normalization(cfg.normalization, model=found.normalization, dataset=given.stats)
    spec = ModelInput(found.model.cfg.input_tdim, norm, found.labels)
    where = (split_column, split) if split else None
    scores, targets = score_dataset(given, ray.put(found.payload), spec, cfg, where)
    if len(scores) == 0:
        raise ValueError(f"{data}: no rows with {split_column} == {split!r}")
    report = format_report(per_class_report(scores, targets, list(found.labels.class_names)))
    return summary(scores, targets, split or "all"), report
