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

import json
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.features import FeatureConfig

SCHEMA_VERSION = 1
FEATURE_COLUMNS = ("clip_id", "uri", "segment_index", "start_s", "end_s", "duration_s",
                   "source_sample_rate", "source_channels", "num_frames", "num_mel_bins",
                   "fbank")
ERROR_COLUMNS = ("path", "uri", "reason", "detail")
METADATA_KEY = b"ssast.dataset"
"""Parquet key-value metadata of every shard: JSON {schema_version, feature_config}."""

NORMALIZATION_PRESETS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}
"""(mean, std) of the original repositories, for comparison with published recipes."""


def feature_columns() -> tuple[str, ...]:
    """Columns appended after the manifest's own (``uri`` is resolved with the manifest)."""
    return tuple(c for c in FEATURE_COLUMNS if c != "uri")


def shard_metadata(cfg: FeatureConfig) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION,
                                      "feature_config": cfg.to_dict()}).encode()}


@dataclass(frozen=True)
class DatasetInfo:
    """``dataset.json`` of a featurized dataset."""

    root: str
    schema_version: int
    feature_config: FeatureConfig
    num_rows: int
    num_errors: int
    hours: float
    mean: float
    std: float
    raw: dict[str, Any]

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
    return DatasetInfo(root=root, schema_version=raw["schema_version"], feature_config=cfg,
                       num_rows=raw["num_rows"], num_errors=raw["num_errors"],
                       hours=raw["hours"], mean=raw["mean"], std=raw["std"], raw=raw)


def check_feature_config(found: FeatureConfig, expected: FeatureConfig | None, where: str
                         ) -> None:
    """ValueError naming every field where ``found`` differs from ``expected``."""
    if expected is None or found == expected:
        return
    a, b = found.to_dict(), expected.to_dict()
    diff = [f"{k}: dataset {a[k]!r} vs expected {b[k]!r}" for k in a if a[k] != b[k]]
    raise ValueError(
        f"{where} was featurized with a different feature config ({'; '.join(diff)}); "
        "featurize again with the expected config or change the expectation"
    )


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write JSON atomically where the filesystem allows (local: temp file + rename)."""
    fs, p = fsspec.core.url_to_fs(path)
    text = json.dumps(payload, indent=2, sort_keys=True)
    if is_local(fs):
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "w") as f:
            f.write(text)
        fs.mv(tmp, p)
    else:  # an object store PUT is atomic: the object appears whole or not at all
        with fs.open(p, "w") as f:
            f.write(text)


def write_parquet(table: pa.Table, path: str) -> None:
    """Write one Parquet file (zstd) so that it appears whole or not at all."""
    fs, p = fsspec.core.url_to_fs(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    local = is_local(fs)
    target = f"{p}.tmp-{uuid.uuid4().hex[:8]}" if local else p  # an object PUT is atomic
    with fs.open(target, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=64)
    if local:
        fs.mv(target, p)


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return None
    with fs.open(p, "r") as f:
        return json.load(f)


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
