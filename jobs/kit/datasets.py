"""Small feature sets prepared in the driver process.

A Ray Data job costs seconds of start-up on a small cluster (read tasks, a map stage,
materialisation) before its first row, which dominates a run on a few hundred clips. Up
to :data:`DRIVER_PREPARE_MB` of model input, the driver reads the shard files with
pyarrow, prepares the rows itself and hands Ray Data finished blocks; larger sets go
through Ray Data as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.batches import auto_target_frames
from pipeline.schema import DatasetInfo

logger = logging.getLogger("datasets")

DRIVER_PREPARE_MB = 256
"""Model input (float32) up to this size is prepared in the driver."""
ROWS_PER_BLOCK = 16
"""Rows per block of a driver-prepared dataset: enough blocks to split across workers and
to reshuffle between passes."""


def input_mb(num_rows: int, frames: int, mel_bins: int) -> float:
    """Size of ``num_rows`` clips as float32 model input (frames x mel bins), in MB."""
    return num_rows * frames * mel_bins * 4 / 2**20


def shard_files(features_dir: str) -> list[str]:
    """The committed Parquet shards of a features directory (not leftover temp files),
    as URIs Ray Data and pyarrow both read."""
    fs, root = fsspec.core.url_to_fs(features_dir)
    files = sorted(fs.glob(f"{root}/*.parquet"))
    if not files:
        raise ValueError(f"{features_dir} holds no Parquet shards; featurize again")
    return [fs.unstrip_protocol(f) if "://" in features_dir else f for f in files]


def read_rows(
    features_dir: str,
    columns: Sequence[str],
    where: tuple[str, object] | None = None,
    limit: int | None = None,
) -> pa.Table:
    """The ``columns`` of a features directory's rows, in shard order; with
    ``where=(column, value)`` only the rows whose column equals value; the first
    ``limit`` of them."""
    fs, _ = fsspec.core.url_to_fs(features_dir)
    wanted = list(dict.fromkeys([*columns, *([where[0]] if where else [])]))
    parts, n = [], 0
    for uri in shard_files(features_dir):
        with fs.open(fsspec.core.url_to_fs(uri)[1], "rb") as f:
            part = pq.read_table(f, columns=wanted)
        if where is not None:
            part = part.filter(pc.equal(part.column(where[0]), pa.scalar(where[1])))
        parts.append(part.select(list(columns)))
        n += part.num_rows
        if limit is not None and n >= limit:
            break
    table = pa.concat_tables(parts)
    return table.slice(0, limit) if limit is not None else table


AUTO_MULTIPLE = 16
"""``model.input_tdim=auto`` rounds up to a multiple of this many frames (a 16x16 patch's
time size, and a whole number of 128x2 frame patches)."""


def auto_length(info: DatasetInfo, where: tuple[str, object] | None = None) -> int:
    """``model.input_tdim=auto``: the 95th percentile of the rows' frame counts, rounded
    up to :data:`AUTO_MULTIPLE` (:func:`pipeline.batches.auto_target_frames`); with
    ``where=(column, value)`` only those rows (fine-tuning: the training split). A dataset
    cut into segments (``features.segment_s``) counts no row above one segment: the last
    piece of a recording, up to ``segment_s + min_segment_s`` long, does not set the
    length (2 s segments: 208 frames). Reads the ``num_frames`` column only."""
    frames = read_rows(info.features_dir, ["num_frames"], where).column("num_frames").to_numpy()
    if frames.size == 0:
        raise ValueError(f"model.input_tdim=auto: {info.features_dir} has no rows to measure")
    fc, capped = info.feature_config, ""
    if fc.segment_s is not None:
        segment = fc.num_frames(round(fc.segment_s * fc.sample_rate_hz))
        frames, capped = np.minimum(frames, segment), f", each at most one segment ({segment})"
    length = auto_target_frames(frames, AUTO_MULTIPLE)
    logger.info(
        "model.input_tdim=auto: %d frames (95th percentile of %d clips%s%s, rounded up to %d)",
        length,
        frames.size,
        f" with {where[0]} = {where[1]}" if where else "",
        capped,
        AUTO_MULTIPLE,
    )
    return length


def quiet_training_passes() -> None:
    """Ray Data's console lines off for the datasets of a training run, made before they
    are: no progress bars, and no "Starting execution" / "Execution plan" pair, which
    the split coordinator prints for every pass over every split (each epoch). The
    run's own line per step or epoch says where it is; Ray Data's full log stays in the
    session's ``logs/ray-data``."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def prepared_dataset(rows: pa.Table, prepare: Callable[[pa.Table], dict[str, np.ndarray]]):
    """A materialized Ray Dataset of ``prepare``'s tensor columns over ``rows``, in
    blocks of :data:`ROWS_PER_BLOCK`."""
    import ray
    from ray.data.extensions import ArrowTensorArray

    blocks = []
    for k in range(0, rows.num_rows, ROWS_PER_BLOCK):
        arrays = prepare(rows.slice(k, ROWS_PER_BLOCK))
        blocks.append(
            pa.table({name: ArrowTensorArray.from_numpy(a) for name, a in arrays.items()})
        )
    if not blocks:
        raise ValueError("no rows to prepare")
    return ray.data.from_arrow(blocks)
