"""Small storage helpers for local paths and object stores (``s3://``) alike: files that
appear whole or not at all, JSON read back as None when absent."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def absolute(uri: str) -> str:
    """A local path made absolute; a URI (``s3://...``) unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, p = fsspec.core.url_to_fs(uri)
    return fs.exists(p)


def remove(uri: str) -> None:
    """Delete a file if it is there."""
    fs, p = fsspec.core.url_to_fs(uri)
    if fs.exists(p):
        fs.rm(p)


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
