"""Input manifests: CSV, JSONL or Parquet with a ``path`` column, or a directory / glob.

Relative paths resolve against the manifest's own folder (which may be ``s3://...``).
Optional ``start_s`` / ``end_s`` columns select a segment of the file. Every other
column (``label``, ``split``, ...) is carried unchanged into the features table.
"""

from __future__ import annotations

import csv
import logging
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64")
RESERVED = (
    "uri",
    "clip_id",
    "segment_index",
    "duration_s",
    "source_sample_rate",
    "source_channels",
    "num_frames",
    "num_mel_bins",
    "fbank",
    "reason",
    "detail",
    "row_index",
)
"""Columns the pipeline writes; a manifest may not bring its own."""

logger = logging.getLogger(__name__)


def read_manifest(source: str) -> pa.Table:
    """Load a manifest (or list a directory / glob of audio files) into a table.

    Returns:
        The manifest's columns plus ``uri`` (the resolved location) and ``row_index``
        (position in the manifest, the basis of deterministic sharding). ``start_s`` and
        ``end_s`` are float64 when present.

    Raises:
        ValueError: unknown file type, no ``path`` column, reserved column names, or an
            empty input; the message names the file.
    """
    fs, root = fsspec.core.url_to_fs(source)
    if fs.isdir(root) or any(ch in root for ch in "*?["):
        table = _list_audio(fs, root, source)
        base = None
    else:
        table = _read_table(fs, root, source)
        base = posixpath.dirname(source.rstrip("/")) if "://" in source else _local_dir(root)
    if "path" not in table.column_names:
        raise ValueError(
            f"manifest {source} has no 'path' column (columns: {table.column_names}); "
            "add a column named path with one audio file per row"
        )
    clash = [c for c in table.column_names if c in RESERVED]
    if clash:
        raise ValueError(f"manifest {source} uses reserved column names {clash}; rename them")
    if table.num_rows == 0:
        raise ValueError(f"manifest {source} lists no files")
    paths = table.column("path").cast(pa.string())
    if pc.any(pc.is_null(paths)).as_py():
        raise ValueError(f"manifest {source} has empty 'path' values")
    table = table.set_column(table.column_names.index("path"), "path", paths)
    uris = _resolve(paths, base)
    for col in ("start_s", "end_s"):
        if col in table.column_names:
            idx = table.column_names.index(col)
            table = table.set_column(idx, col, table.column(col).cast(pa.float64()))
    table = table.append_column("uri", uris)
    return table.append_column("row_index", pa.array(np.arange(table.num_rows, dtype=np.int64)))


def duplicate_rows(manifest: pa.Table) -> int:
    """Rows that repeat an earlier row's clip (same uri, start_s and end_s): each gives
    the same clip_id, so the features hold the clip twice."""
    keys = [c for c in ("uri", "start_s", "end_s") if c in manifest.column_names]
    if manifest.num_rows == 0:
        return 0
    unique = manifest.select(keys).group_by(keys, use_threads=False).aggregate([]).num_rows
    return manifest.num_rows - unique


def _read_table(fs, path: str, source: str) -> pa.Table:
    try:
        return _parse_table(fs, path, source)
    except (pa.ArrowInvalid, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"manifest {source} cannot be parsed: {err}") from None


def _parse_table(fs, path: str, source: str) -> pa.Table:
    lower = path.lower()
    with fs.open(path, "rb") as f:
        if lower.endswith(".csv"):
            # Every column as text except the segment bounds: labels such as "01" stay
            # exactly as written.
            header = next(csv.reader([f.readline().decode("utf-8-sig")]), [])
            f.seek(0)
            types = {c: pa.float64() if c in ("start_s", "end_s") else pa.string() for c in header}
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types=types))
        elif lower.endswith((".jsonl", ".json", ".ndjson")):
            table = pajson.read_json(f)
        elif lower.endswith(".parquet"):
            table = pq.read_table(f)
        else:
            raise ValueError(
                f"manifest {source}: unknown type; use .csv, .jsonl or .parquet, or pass a "
                "directory or glob of audio files"
            )
    return table


def _list_audio(fs, root: str, source: str) -> pa.Table:
    pattern = root if any(ch in root for ch in "*?[") else root.rstrip("/") + "/**"
    found = sorted(p for p in fs.glob(pattern) if p.lower().endswith(AUDIO_EXTENSIONS))
    named = [p for p in found if _is_utf8(p)]
    if len(named) < len(found):  # undecodable names: not storable as text, listed in the log
        bad = [p.encode("utf-8", "surrogateescape") for p in found if not _is_utf8(p)]
        logger.warning(
            "%s: skipping %d files whose names are not UTF-8 (rename them): %s",
            source,
            len(bad),
            bad[:5],
        )
        found = named
    if not found:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {source}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        found = [f"{protocol}://{p}" for p in found]
    return pa.table({"path": pa.array(found, pa.string())})


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _local_dir(path: str) -> str:
    return posixpath.dirname(posixpath.abspath(path))


def _resolve(paths: pa.ChunkedArray, base: str | None) -> pa.ChunkedArray:
    """Paths relative to ``base`` joined to it; absolute paths and URIs as they are.
    Columnar: no Python string per row (a manifest may have millions)."""
    if base is None:
        return paths
    absolute = pc.or_(pc.starts_with(paths, "/"), pc.match_substring(paths, "://"))
    joined = pc.binary_join_element_wise(base.rstrip("/"), paths, "/")
    return pc.if_else(absolute, paths, joined)
