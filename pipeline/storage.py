"""Small storage helpers for local paths and object stores (``s3://``) alike: files that
appear whole or not at all, JSON read back as None when absent."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
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
    # Float list columns (the fbank) without a dictionary and without min/max statistics:
    # for ~128k float16 values a clip they cost 4x the write time (and the dictionary 7x
    # the read time) for no gain in size or use (bench/featurize.py's profile).
    plain = [
        f.name
        for f in table.schema
        if not (pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type))
    ]
    with fs.open(target, "wb") as f:
        pq.write_table(
            table,
            f,
            compression="zstd",
            row_group_size=64,
            use_dictionary=plain,
            write_statistics=plain,
        )
    if local:
        fs.mv(target, p)


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return None
    with fs.open(p, "r") as f:
        return json.load(f)


def read_jsons(paths: list[str]) -> list[dict[str, Any] | None]:
    """Several JSON files of one filesystem at once (None where missing): on an object
    store the GETs run concurrently (fsspec's ``cat`` of a list), not one by one."""
    if not paths:
        return []
    fs, _ = fsspec.core.url_to_fs(paths[0])
    stripped = [fs._strip_protocol(p) for p in paths]
    found = fs.cat(stripped, on_error="omit")
    return [json.loads(found[p]) if p in found else None for p in stripped]


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


class OutputBusyError(ValueError):
    """Another live job holds the output's lock."""


class OutputLock:
    """An exclusive claim on an output directory while a job writes it (``_lock.json``).

    Created atomically on local disks (O_EXCL); on object stores by a PUT after an
    existence check, read back to detect a lost race. The holder refreshes the file
    every ``beat_s``; a lock is stale, and taken over with a warning, when its holder
    is a dead process on this host or its last refresh is older than ``stale_s`` (a
    killed job's rerun resumes at once on the same host, after ``stale_s`` elsewhere).
    """

    def __init__(self, root: str, stale_s: float = 60.0, beat_s: float = 10.0) -> None:
        self.path = root.rstrip("/") + "/_lock.json"
        self.stale_s, self.beat_s = stale_s, beat_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        fs, p = fsspec.core.url_to_fs(self.path)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        for _ in range(3):
            if self._create(fs, p):
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return self
            holder = self._holder(fs, p)
            if holder is not None and not self._stale(holder):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(holder.get("time", 0)))
                raise OutputBusyError(
                    f"{self.path.rsplit('/', 1)[0]} is being written by another job (host "
                    f"{holder.get('host')}, pid {holder.get('pid')}, alive at {since} UTC); "
                    f"wait for it to finish, or if it is gone delete {self.path}"
                )
            if holder is not None:
                logging.getLogger(__name__).warning(
                    "taking over the stale lock %s of host %s pid %s",
                    self.path,
                    holder.get("host"),
                    holder.get("pid"),
                )
                fs.rm(p)
            else:
                time.sleep(0.5)  # being written right now: look again
        raise OutputBusyError(f"could not claim {self.path}; another job keeps taking it")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        fs, p = fsspec.core.url_to_fs(self.path)
        holder = self._holder(fs, p)
        if holder is not None and holder.get("token") == self.me["token"]:
            fs.rm(p)

    def _payload(self) -> str:
        return json.dumps(self.me | {"time": time.time()})

    def _create(self, fs, p: str) -> bool:
        if is_local(fs):
            try:
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(self._payload())
            return True
        if fs.exists(p):
            return False
        fs.pipe_file(p, self._payload().encode())
        time.sleep(0.2)  # a racing writer's PUT lands within this; the last one wins
        fs.invalidate_cache(p)
        holder = self._holder(fs, p)
        return holder is not None and holder.get("token") == self.me["token"]

    def _holder(self, fs, p: str) -> dict[str, Any] | None:
        try:
            with fs.open(p, "r") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == self.me["host"] and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass  # alive, another user's
        return time.time() - float(holder.get("time", 0)) > self.stale_s

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                write_json(self.path, json.loads(self._payload()))
            except OSError as err:  # a missed beat is retried; stale only after stale_s
                logging.getLogger(__name__).warning("lock refresh of %s failed: %s", self.path, err)
