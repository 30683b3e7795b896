"""Small feature sets prepared in the driver process.

A Ray Data job costs seconds of start-up on a small cluster (read tasks, a map stage,
materialisation) before its first row, which dominates a run on a few hundred clips. Up
to :data:`DRIVER_PREPARE_MB` of model input, the driver reads the shard files with
pyarrow, prepares the rows itself and hands Ray Data finished blocks; larger sets go
through Ray Data as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
