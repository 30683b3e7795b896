"""The Ray Data featurization graph: manifest -> sharded Parquet features, errors, stats.

Work is cut into shards of consecutive manifest rows (shard k = rows k*S .. k*S+S-1), so
the assignment is a pure function of the manifest. Each shard is one Ray Data task that
fetches, decodes, resamples and featurizes its clips and commits three files in order:
``features/part-k``, ``errors/part-k`` and last the marker ``_shards/part-k.json`` with
the shard's counts and sums. A rerun skips shards that have a marker and redoes the
others, overwriting any half-written files under the same names; so a killed job
resumes without duplicated or missing clips, and a finished job reruns as a no-op.
Dataset statistics are sums over the markers, so resuming never rereads features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.clips import MAX_FILE_MB, featurize_rows, featurize_table
from pipeline.features import FeatureConfig
from pipeline.manifest import duplicate_rows, read_manifest
from pipeline.schema import SCHEMA_VERSION, column_sha1, shard_metadata
from pipeline.storage import OutputLock, read_json, read_jsons, write_json, write_parquet

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FeaturizeConfig:
    """Settings of a featurization run."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    """How audio becomes fbank (stored with the dataset)."""
    clips_per_shard: int | None = None
    """Manifest rows per shard: the unit of work, commit and resume. None: 128, more
    above 131,072 rows (about 1,024 shards of at most 1,024 rows; see shard_size)."""
    max_error_fraction: float = 0.05
    """The job fails (non-zero exit) when more than this share of inputs are errors."""
    num_cpus_per_task: float = 1.0
    """CPUs reserved per shard task."""
    limit: int | None = None
    """Featurize only the first N manifest rows (smoke runs)."""
    max_file_mb: float = MAX_FILE_MB
    """Largest input file read; a larger one is a too_large error row."""

    def __post_init__(self) -> None:
        if self.clips_per_shard is not None and self.clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {self.clips_per_shard}")
        if not 0 <= self.max_error_fraction <= 1:
            raise ValueError(f"max_error_fraction must be in [0, 1], got {self.max_error_fraction}")
        if self.num_cpus_per_task <= 0:
            raise ValueError(f"num_cpus_per_task must be > 0, got {self.num_cpus_per_task}")
        if not self.max_file_mb > 0:
            raise ValueError(f"max_file_mb must be > 0, got {self.max_file_mb}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")


SHARD_ROWS = 128
"""Rows per shard of a manifest up to ``SHARD_ROWS * TARGET_SHARDS`` rows."""
TARGET_SHARDS = 1024
MAX_SHARD_ROWS = 1024


def shard_size(num_inputs: int) -> int:
    """Rows per shard when ``clips_per_shard`` is not set: 128 up to 131,072 rows (a shard
    is the unit of resume: small loses little when a task dies), then a multiple of 128
    so the job has about 1,024 shards, at most 1,024 rows (the feature file of 1,024
    clips of 10 s is ~200 MB, inside Ray Data's advice of 64-256 MB blocks). Fewer,
    larger shards: fewer tasks, markers and files for the driver to plan and read."""
    per = -(-num_inputs // (SHARD_ROWS * TARGET_SHARDS)) * SHARD_ROWS
    return min(MAX_SHARD_ROWS, max(SHARD_ROWS, per))


@dataclass(frozen=True)
class FeaturizeSummary:
    """What a run produced (also the content of ``dataset.json``)."""

    output: str
    info: dict[str, Any]
    shards_done_now: int
    wall_s: float

    @property
    def error_fraction(self) -> float:
        total = self.info["num_inputs"]
        return self.info["num_errors"] / total if total else 0.0

    def table(self) -> str:
        """A short human-readable summary."""
        i = self.info
        lines = [
            f"dataset      {self.output}",
            f"inputs       {i['num_inputs']} ({i['num_ok_inputs']} ok, "
            f"{i['num_errors']} errors = {self.error_fraction:.1%})",
            f"rows         {i['num_rows']} clips/segments, {i['hours']:.3f} h of audio",
            f"statistics   mean {i['mean']:.4f}, std {i['std']:.4f} over {i['num_frames']} frames",
        ]
        for reason, n in sorted(i["errors_by_reason"].items()):
            lines.append(f"  error      {reason}: {n}")
        if i.get("num_duplicate_inputs"):
            lines.append(f"  duplicate  {i['num_duplicate_inputs']} rows repeat an earlier clip")
        rate = self.shards_done_now and i["num_inputs"] / max(self.wall_s, 1e-9)
        lines.append(
            f"this run     {self.shards_done_now} shards in {self.wall_s:.1f} s"
            + (f" ({rate:.1f} inputs/s)" if self.shards_done_now else " (all done)")
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class Plan:
    """What a featurization run does, decided on the driver before any audio is read."""

    source: str
    manifest: pa.Table
    """The manifest's rows (with ``uri`` and ``row_index``), after ``limit``."""
    cfg: FeaturizeConfig
    """With ``clips_per_shard`` resolved."""
    duplicates: int
    """Rows repeating an earlier row's clip."""
    job: dict[str, Any]
    """The record ``_job.json`` holds: the run's identity."""

    @property
    def num_shards(self) -> int:
        return self.job["num_shards"]

    def summary(self) -> dict[str, Any]:
        """The plan in numbers (``jobs/featurize.py --dry-run`` prints it)."""
        return {
            "input": self.source,
            "num_inputs": self.manifest.num_rows,
            "num_duplicate_inputs": self.duplicates,
            "clips_per_shard": self.cfg.clips_per_shard,
            "num_shards": self.num_shards,
            "input_sha1": self.job["input_sha1"],
            "manifest_mb": round(self.manifest.nbytes / 2**20, 1),
        }


def plan_featurize(source: str, cfg: FeaturizeConfig) -> Plan:
    """Read the manifest and decide the shards; no Ray, no audio, nothing written.

    Raises:
        ValueError: bad manifest (the message names the file).
    """
    manifest = read_manifest(source)
    if cfg.limit is not None:
        manifest = manifest.slice(0, cfg.limit)
    n = manifest.num_rows
    if cfg.clips_per_shard is None:
        cfg = dataclasses.replace(cfg, clips_per_shard=shard_size(n))
    duplicates = duplicate_rows(manifest)
    if duplicates:
        logger.warning(
            "%s: %d rows repeat an earlier row (same file and segment); their clips are "
            "featurized again under the same clip_id (counted in dataset.json)",
            source,
            duplicates,
        )
    columns = {
        c: column_sha1(manifest.column(c)) for c in manifest.column_names if c != "row_index"
    }
    job = {
        "schema_version": SCHEMA_VERSION,
        "feature_config": cfg.features.to_dict(),
        "input": source,
        "input_sha1": hashlib.sha1(json.dumps(columns, sort_keys=True).encode()).hexdigest(),
        "input_columns_sha1": columns,
        "num_inputs": n,
        "clips_per_shard": cfg.clips_per_shard,
        "num_shards": -(-n // cfg.clips_per_shard),
    }
    return Plan(source, manifest, cfg, duplicates, job)


def featurize(source: str, output: str, cfg: FeaturizeConfig) -> FeaturizeSummary:
    """Featurize a manifest (or directory / glob) into ``output`` with Ray Data.

    Needs a running Ray (``ray.init()``). Idempotent and resumable, see module docstring.

    Raises:
        ValueError: bad manifest, ``output`` holds a run of a different input/config, or
            another job is writing it (:class:`pipeline.storage.OutputBusyError`).
    """
    import ray

    start = time.perf_counter()
    plan = plan_featurize(source, cfg)
    cfg, manifest, n = plan.cfg, plan.manifest, plan.manifest.num_rows
    root = output.rstrip("/")
    with OutputLock(root):  # a second job writing the same output is refused
        if check_output(root, plan) is None:
            fs, p = fsspec.core.url_to_fs(root)
            fs.makedirs(p, exist_ok=True)
            write_json(f"{root}/_job.json", plan.job)
        done = finished_shards(root)
        todo = [k for k in range(plan.num_shards) if k not in done]
        if todo:
            logger.info(
                "featurizing %d of %d shards (%d already committed)",
                len(todo),
                plan.num_shards,
                len(done),
            )
            # One block per shard holding that shard's rows only: a task deserialises its
            # own rows, never the whole manifest (the cost of a task does not grow with it).
            S = cfg.clips_per_shard
            ds = ray.data.from_arrow([manifest.slice(k * S, S) for k in todo])
            # One operator only: Ray Data's per-operator reservation would keep half the CPUs
            # idle on small clusters (one shard task at a time on 2 CPUs).
            ds.context.op_resource_reservation_enabled = False
            ds = ds.map_batches(
                _process_shards,
                batch_size=None,  # a whole block, i.e. whole shards
                batch_format="pyarrow",
                num_cpus=cfg.num_cpus_per_task,
                fn_kwargs={"cfg": cfg, "root": root, "num_inputs": n},
            )
            for _ in ds.iter_batches(batch_size=None):  # drive the stream; markers hold results
                pass
        info = _aggregate(root, manifest, cfg, plan.num_shards, plan.duplicates)
        write_json(f"{root}/dataset.json", info)
    return FeaturizeSummary(root, info, len(todo), time.perf_counter() - start)


def check_output(root: str, plan: Plan) -> dict[str, Any] | None:
    """The ``_job.json`` of an earlier run into ``root`` (None: a new output); refuse to
    mix two different runs in one directory. The run is the feature config, the
    sharding and every manifest column (a changed label or split is another run, named
    in the refusal)."""
    job = plan.job
    previous = read_json(f"{root}/_job.json")
    if previous is not None:
        keys = ("schema_version", "feature_config", "num_inputs", "clips_per_shard")
        diff = [k for k in keys if previous.get(k) != job[k]]
        columns = job["input_columns_sha1"]
        before = previous.get("input_columns_sha1", columns)  # older runs: not recorded
        changed = sorted(
            c for c in before.keys() | columns.keys() if before.get(c) != columns.get(c)
        )
        if changed:
            diff.append(f"manifest columns {changed}")
        if diff:
            raise ValueError(
                f"{root} already holds features of a different run (differs in "
                f"{', '.join(diff)}); use a new --output, or delete it to start over"
            )
    return previous


def finished_shards(root: str) -> set[int]:
    fs, p = fsspec.core.url_to_fs(f"{root}/_shards")
    if not fs.exists(p):
        return set()
    names = [n.rsplit("/", 1)[-1] for n in fs.ls(p, detail=False)]
    return {int(n[5:11]) for n in names if n.startswith("part-") and n.endswith(".json")}


def _process_shards(
    rows: pa.Table, *, cfg: FeaturizeConfig, root: str, num_inputs: int
) -> pa.Table:
    """Ray Data UDF: featurize and commit each shard whose rows are in the batch."""
    import torch

    torch.set_num_threads(max(1, int(cfg.num_cpus_per_task)))
    S = cfg.clips_per_shard
    shard = rows.column("row_index").to_numpy() // S
    done = []
    for k in np.unique(shard).tolist():
        mine = rows.filter(pa.array(shard == k))
        expected = min(S, num_inputs - k * S)
        if mine.num_rows != expected or mine.column("row_index")[0].as_py() != k * S:
            raise RuntimeError(  # a shard split across batches would commit half of it
                f"shard {k} arrived with {mine.num_rows} of its {expected} rows"
            )
        features, errors = featurize_table(mine, cfg.features, cfg.max_file_mb)
        name = f"part-{k:06d}"
        meta = shard_metadata(cfg.features)
        write_parquet(features.replace_schema_metadata(meta), f"{root}/features/{name}.parquet")
        write_parquet(errors.replace_schema_metadata(meta), f"{root}/errors/{name}.parquet")
        write_json(f"{root}/_shards/{name}.json", _shard_stats(k, mine, features, errors, cfg))
        done.append(k)
    return pa.table({"shard": pa.array(done, pa.int64())})


def _shard_stats(
    k: int, rows: pa.Table, features: pa.Table, errors: pa.Table, cfg: FeaturizeConfig
) -> dict[str, Any]:
    import torch

    F = cfg.features.num_mel_bins
    values = features.column("fbank").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    # float16 -> float64 in torch: numpy's float16 conversion is ~4x slower.
    values = torch.from_numpy(values.copy()).to(torch.float64).view(-1, F)  # (frames, F)
    return {
        "shard": k,
        "num_inputs": rows.num_rows,
        "num_rows": features.num_rows,
        "num_errors": errors.num_rows,
        "errors_by_reason": dict(Counter(errors.column("reason").to_pylist())),
        "num_frames": int(values.shape[0]),
        "seconds": float(np.sum(features.column("duration_s").to_numpy())),
        "bin_sum": values.sum(dim=0).tolist(),
        "bin_sumsq": values.square().sum(dim=0).tolist(),
    }


def _aggregate(
    root: str, manifest: pa.Table, cfg: FeaturizeConfig, num_shards: int, duplicates: int
) -> dict[str, Any]:
    stats = read_jsons([f"{root}/_shards/part-{k:06d}.json" for k in range(num_shards)])
    missing = [k for k, s in enumerate(stats) if s is None]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} of {root} were not committed; rerun to resume")
    return aggregate_stats(stats, manifest, cfg, duplicates)


def aggregate_stats(
    stats: list[dict[str, Any]],
    manifest: pa.Table,
    cfg: FeaturizeConfig,
    duplicates: int | None = None,
) -> dict[str, Any]:
    """``dataset.json`` from the shards' markers: counts, hours and the statistics of
    every stored log-mel value (sums and sums of squares, so shards combine exactly).
    ``duplicates``: the manifest's :func:`duplicate_rows` when already counted."""
    num_shards = len(stats)
    F = cfg.features.num_mel_bins
    bin_sum = np.sum([s["bin_sum"] for s in stats], axis=0) if stats else np.zeros(F)
    bin_sumsq = np.sum([s["bin_sumsq"] for s in stats], axis=0) if stats else np.zeros(F)
    frames = sum(s["num_frames"] for s in stats)
    count = max(frames * F, 1)
    mean = float(bin_sum.sum() / count)
    var = max(float(bin_sumsq.sum() / count) - mean**2, 0.0)
    bin_mean = bin_sum / max(frames, 1)
    bin_var = np.maximum(bin_sumsq / max(frames, 1) - bin_mean**2, 0.0)
    reasons: Counter = Counter()
    for s in stats:
        reasons.update(s["errors_by_reason"])
    num_err = sum(s["num_errors"] for s in stats)
    return {
        "schema_version": SCHEMA_VERSION,
        "feature_config": cfg.features.to_dict(),
        "num_inputs": manifest.num_rows,
        "num_duplicate_inputs": duplicate_rows(manifest) if duplicates is None else duplicates,
        "num_ok_inputs": manifest.num_rows - num_err,
        "num_errors": num_err,
        "errors_by_reason": dict(reasons),
        "num_rows": sum(s["num_rows"] for s in stats),
        "num_frames": frames,
        "hours": sum(s["seconds"] for s in stats) / 3600,
        "mean": mean,
        "std": var**0.5,
        "mean_per_bin": bin_mean.tolist(),
        "std_per_bin": np.sqrt(bin_var).tolist(),
        "num_shards": num_shards,
        "clips_per_shard": cfg.clips_per_shard,
        "columns": [c for c in manifest.column_names if c != "row_index"],
    }


def stream_features(
    source: str | pa.Table,
    features: FeatureConfig,
    batch_size: int = 16,
    num_cpus: float = 1.0,
    keep_errors: bool = False,
):
    """The same per-clip work as a lazy Ray Dataset of feature rows, nothing written.

    Bad clips are dropped from the stream and logged with their reason (the sharded job
    is the place for a durable errors table), or, with ``keep_errors``, kept as rows
    whose ``reason`` / ``detail`` columns are set (null for good rows, whose feature
    columns are then set) so a consumer can write its own errors table.
    """
    import ray

    manifest = read_manifest(source) if isinstance(source, str) else source
    # One block per batch so every CPU (or actor downstream) gets clips to work on.
    blocks = [manifest.slice(k, batch_size) for k in range(0, manifest.num_rows, batch_size)]
    return ray.data.from_arrow(blocks or manifest).map_batches(
        _stream_batch,
        batch_format="pyarrow",
        batch_size=batch_size,
        num_cpus=num_cpus,
        fn_kwargs={"features": features, "keep_errors": keep_errors},
    )


def _stream_batch(rows: pa.Table, *, features: FeatureConfig, keep_errors: bool) -> pa.Table:
    if keep_errors:
        return featurize_rows(rows, features)
    feats, errors = featurize_table(rows, features)
    for path, reason, detail in zip(
        errors.column("path").to_pylist(),
        errors.column("reason").to_pylist(),
        errors.column("detail").to_pylist(),
        strict=True,
    ):
        logger.warning("skipping %s: %s (%s)", path, reason, detail)
    return feats
