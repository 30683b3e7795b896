"""Input manifests: CSV, JSONL or Parquet with a ``path`` column, or a directory / glob.

Relative paths resolve against the manifest's own folder (which may be ``s3://...``).
Optional ``start_s`` / ``end_s`` columns select a segment of the file. Every other
column (``label``, ``split``, ...) is carried unchanged into the features table.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

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
LIST_PAGE_SIZE = 1000
"""Keys per S3 listing request (S3's own maximum): a directory input arrives page by page."""
CHUNK_ROWS = 10_000
"""Paths per Arrow chunk while listing a directory: the driver holds no list of every path."""

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
    """Every audio file under a directory (or matching a glob) as a sorted ``path`` column.

    The listing streams: names arrive a page (S3) or a directory (local and other
    filesystems) at a time and are kept as Arrow chunks of at most ``CHUNK_ROWS`` paths, so
    the driver holds one page of Python objects at a time and millions of objects cost
    only their bytes. A glob keeps ``fs.glob`` (its matching needs the names anyway).
    """
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if any(ch in root for ch in "*?["):
        names = iter(fs.glob(root))
    elif protocol in ("s3", "s3a"):
        names = itertools.chain.from_iterable(_s3_pages(fs, root, LIST_PAGE_SIZE))
    elif isinstance(fs, LocalFileSystem):
        names = _local_files(root)
    else:
        names = (posixpath.join(top, f) for top, _, files in fs.walk(root) for f in files)
    paths = _collect_audio(names, source)
    if len(paths) == 0:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {source}")
    paths = paths.take(pc.sort_indices(paths))  # byte order of UTF-8 = code point order
    if protocol not in ("file", "local"):
        paths = pc.binary_join_element_wise(f"{protocol}://", paths, "")
    return pa.table({"path": paths})


def _collect_audio(names: Iterable[str], source: str) -> pa.ChunkedArray:
    """The audio files among ``names`` as Arrow chunks of at most ``CHUNK_ROWS`` paths.
    Undecodable names (not storable as text) are skipped and listed in the log."""
    chunks: list[pa.Array] = []
    buffer: list[str] = []
    bad: list[bytes] = []
    num_bad = 0
    for name in names:
        if not name.lower().endswith(AUDIO_EXTENSIONS):
            continue
        if not _is_utf8(name):
            num_bad += 1
            if len(bad) < 5:
                bad.append(name.encode("utf-8", "surrogateescape"))
            continue
        buffer.append(name)
        if len(buffer) == CHUNK_ROWS:
            chunks.append(pa.array(buffer, pa.string()))
            buffer = []
    if buffer:
        chunks.append(pa.array(buffer, pa.string()))
    if num_bad:
        logger.warning(
            "%s: skipping %d files whose names are not UTF-8 (rename them): %s",
            source,
            num_bad,
            bad,
        )
    return pa.chunked_array(chunks, pa.string())


def _s3_pages(fs, root: str, page_size: int) -> Iterator[list[str]]:
    """Object names (``bucket/key``) under ``root``, one list per ``list_objects_v2``
    request of at most ``page_size`` keys. No delimiter: the whole tree comes in one
    paginated listing, not one listing per folder. ``call_s3`` retries each page."""
    bucket, key, _ = fs.split_path(root)
    prefix = f"{key.rstrip('/')}/" if key else ""
    request = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    while True:
        page = fs.call_s3("list_objects_v2", **request)
        yield [f"{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def _local_files(root: str) -> Iterator[str]:
    """Paths of the files under a local directory, one ``os.scandir`` at a time (no stat
    per regular file). Symlinks to files are listed; symlinked folders are not followed (as
    fsspec's walk does), so a link back up cannot loop. An unreadable folder is skipped
    with a warning."""
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.is_dir():
                        yield entry.path
                    elif not entry.is_symlink():
                        folders.append(entry.path)
        except OSError as err:
            logger.warning("%s: skipped while listing: %s", folder, err)


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
