"""The featurized dataset's contract: layout, columns, ``dataset.json``, compatibility.

Layout of a dataset directory (local or ``s3://``)::

    DIR/features/part-000000.parquet   feature rows of shard 0 (zstd)
    DIR/errors/part-000000.parquet     rejected inputs of shard 0 (may have 0 rows)
    DIR/_shards/part-000000.json       commit marker of shard 0: counts and sums
    DIR/_job.json                      what is being featurized (config, input, shards)
    DIR/dataset.json                   written last: config, counts, hours, mean, std

Feature columns (schema version 1), after the manifest's own columns (``path`` exactly as
written in the manifest, ``label``, ``split``, ...):

====================  ============  ==================================================
column                type          meaning
====================  ============  ==================================================
clip_id               string        sha1 of (uri, start ms, end ms), 20 hex chars
uri                   string        resolved location that was read
segment_index         int32         0 for a whole clip; k for the k-th cut segment
start_s / end_s       float64       segment bounds within the source file (seconds)
duration_s            float64       end_s - start_s
source_sample_rate    int32         the file's own rate (features are at 16 kHz)
source_channels       int16         the file's channel count (features are mono)
num_frames            int32         m, frames of this row (>= 1)
num_mel_bins          int16         F (128)
fbank                 list<float16> m * F log-mel values, frame-major: reshape (m, F)
====================  ============  ==================================================

The fbank is stored unpadded, in float16: a row holds the clip's own length, so one
dataset serves any training length (1024 frames for pretraining, 128 for keyword
spotting) and short clips waste nothing. float16 keeps log-mel values (about -16..+10)
to within 0.008, i.e. < 1e-3 after the (x - mean) / (2 std) normalisation.
Cost: 100 frames/s x 128 bins x 2 bytes = 92 MB per hour of audio before compression.

Error columns: path, uri, reason (see :data:`pipeline.audio.REASONS`), detail.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from pipeline.features import FeatureConfig
from pipeline.normalization import Normalization

SCHEMA_VERSION = 1
FEATURE_COLUMNS = (
    "clip_id",
    "uri",
    "segment_index",
    "start_s",
    "end_s",
    "duration_s",
    "source_sample_rate",
    "source_channels",
    "num_frames",
    "num_mel_bins",
    "fbank",
)
ERROR_COLUMNS = ("path", "uri", "reason", "detail")
METADATA_KEY = b"ssast.dataset"
"""Parquet key-value metadata of every shard: JSON {schema_version, feature_config}."""


def column_sha1(column: pa.ChunkedArray | pa.Array) -> str:
    """sha1 of a column's values (its Arrow IPC bytes, independent of chunking)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    sink = pa.BufferOutputStream()
    table = pa.table({"c": column})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha1(sink.getvalue()).hexdigest()


def feature_columns() -> tuple[str, ...]:
    """Columns appended after the manifest's own (``uri`` is resolved with the manifest)."""
    return tuple(c for c in FEATURE_COLUMNS if c != "uri")


def shard_metadata(cfg: FeatureConfig) -> dict[bytes, bytes]:
    return {
        METADATA_KEY: json.dumps(
            {"schema_version": SCHEMA_VERSION, "feature_config": cfg.to_dict()}
        ).encode()
    }


@dataclass(frozen=True)
class DatasetInfo:
    """``dataset.json`` of a featurized dataset."""

    root: str
    feature_config: FeatureConfig
    num_rows: int
    num_errors: int
    hours: float
    mean: float
    std: float

    @property
    def statistics(self) -> Normalization:
        """The dataset's own normalisation (mean and std of its log-mel values)."""
        return Normalization(self.mean, self.std)

    @property
    def features_dir(self) -> str:
        return self.root.rstrip("/") + "/features"

    @property
    def errors_dir(self) -> str:
        return self.root.rstrip("/") + "/errors"


def load_dataset_info(root: str, expected: FeatureConfig | None = None) -> DatasetInfo:
    """Read ``DIR/dataset.json`` and refuse a dataset that does not match.

    Raises:
        ValueError: no dataset.json (featurization not finished), another schema version,
            or a feature config different from ``expected`` (the differing fields named).
    """
    path = root.rstrip("/") + "/dataset.json"
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        raise ValueError(
            f"{root} has no dataset.json: not a featurized dataset, or featurization did not "
            "finish; run jobs/featurize.py --output on it (reruns resume)"
        )
    with fs.open(p, "r") as f:
        raw = json.load(f)
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema version {raw.get('schema_version')}, this code reads "
            f"{SCHEMA_VERSION}; featurize the input again into a new directory"
        )
    cfg = FeatureConfig.from_dict(raw["feature_config"])
    check_feature_config(cfg, expected, where=path)
    stats = {k: raw.get(k) for k in ("mean", "std")}
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats.values()):
        bad = stats
    else:
        bad = {} if stats["std"] > 0 else stats
    if bad:
        raise ValueError(
            f"{path}: statistics {bad} are not usable (not finite, or "
            "std <= 0): some stored features are not finite; featurize the input again "
            "into a new directory (non-finite clips then become error rows)"
        )
    return DatasetInfo(
        root=root,
        feature_config=cfg,
        num_rows=raw["num_rows"],
        num_errors=raw["num_errors"],
        hours=raw["hours"],
        mean=raw["mean"],
        std=raw["std"],
    )


def check_feature_config(found: FeatureConfig, expected: FeatureConfig | None, where: str) -> None:
    """ValueError naming every field where ``found`` differs from ``expected``."""
    if expected is None or found == expected:
        return
    raise ValueError(
        f"{where} was featurized with a different feature config "
        f"({feature_diff(found, expected)}); featurize again with the expected config or "
        "change the expectation"
    )


def feature_diff(
    found: FeatureConfig, expected: FeatureConfig, a: str = "dataset", b: str = "expected"
) -> str:
    """``field: a value vs b value`` for every field where the two configs differ."""
    x, y = found.to_dict(), expected.to_dict()
    return "; ".join(f"{k}: {a} {x[k]!r} vs {b} {y[k]!r}" for k in y if x.get(k) != y[k])
