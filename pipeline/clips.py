"""Manifest rows -> feature rows and error rows. Plain Arrow + NumPy, no Ray.

This is the unit of work of both the sharded job and the streaming graph: fetch the
bytes of a batch of rows, decode, cut segments, resample, compute fbank for all clips in
one pass, and return two Arrow tables (features and errors) in the documented schema.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.asyn import AsyncFileSystem, _run_coros_in_chunks, sync

from pipeline.audio import AudioError, open_audio, read_blocks
from pipeline.features import FbankExtractor, FeatureConfig, prepare_blocks
from pipeline.schema import ERROR_COLUMNS, feature_columns

logger = logging.getLogger(__name__)

_EXTRACTORS: dict[FeatureConfig, FbankExtractor] = {}


def extractor_for(cfg: FeatureConfig) -> FbankExtractor:
    """One cached extractor per config and process (mel banks are built once)."""
    if cfg not in _EXTRACTORS:
        _EXTRACTORS[cfg] = FbankExtractor(cfg)
    return _EXTRACTORS[cfg]


MAX_FILE_MB = 2048.0
"""Default cap on one input file's size: a larger file is a ``too_large`` error row."""
STREAM_MB = 64.0
"""Files above this size are decoded in blocks (local: from disk; remote: by ranged
reads), never read whole."""
REMOTE_BLOCK_MB = 8.0
"""Size of one ranged read of a streamed remote file."""


@dataclass(frozen=True)
class RemoteFile:
    """A remote file over :data:`STREAM_MB`, opened when decoded and read block by block."""

    fs: fsspec.AbstractFileSystem
    uri: str
    size: int

    def open(self):
        return self.fs.open(self.uri, "rb", block_size=int(REMOTE_BLOCK_MB * 2**20))


Payload = bytes | Path | RemoteFile | AudioError


def fetch(uris: Sequence[str], max_file_mb: float = MAX_FILE_MB) -> list[Payload]:
    """Read every URI; an unreadable one gives an :class:`AudioError` instead of bytes, a
    file over :data:`STREAM_MB` its path (local) or a :class:`RemoteFile` (decoded block
    by block, never held whole).

    Only regular files are read (a FIFO, device or directory is ``not_a_file``), at most
    ``max_file_mb`` each (``too_large`` beyond, found from the size without reading). An
    unknown scheme or one whose fsspec package is missing is ``unsupported_scheme`` for
    its rows only. Remote URIs of one filesystem are looked up, then fetched, concurrently
    (fsspec ``info`` and ``cat``).
    """
    limit = int(max_file_mb * 2**20)
    out: list[Payload] = [AudioError("missing", "not fetched")] * len(uris)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        groups[uri.split("://", 1)[0].lower() if "://" in uri else "file"].append(i)
    for protocol, idx in groups.items():
        if protocol in ("file", "local"):
            for i in idx:
                out[i] = _read_local(uris[i].split("://", 1)[-1], limit)
            continue
        try:
            fs = fsspec.filesystem(protocol)
            infos = _infos(fs, [uris[i] for i in idx])
            whole = []
            for i, info in zip(idx, infos, strict=True):
                if isinstance(info, BaseException):
                    out[i] = AudioError("missing", f"{type(info).__name__}: {info}")
                elif info.get("type", "file") != "file":
                    out[i] = AudioError("not_a_file", f"{uris[i]} is a {info['type']}")
                elif (info.get("size") or 0) > limit:
                    out[i] = AudioError("too_large", f"over {max_file_mb:g} MB")
                elif (info.get("size") or 0) > STREAM_MB * 2**20:
                    out[i] = RemoteFile(fs, uris[i], int(info["size"]))
                else:
                    whole.append(i)
            idx = whole
            # One byte more than the cap tells a file at the cap from a larger one
            # (a file that grew since its size was read).
            got = fs.cat([uris[i] for i in idx], on_error="return", end=limit + 1)
        except Exception as err:  # noqa: BLE001 - unknown scheme, missing package, auth
            reason = (
                "unsupported_scheme" if isinstance(err, (ValueError, ImportError)) else "missing"
            )
            for i in idx:
                out[i] = AudioError(reason, f"{protocol}://: {type(err).__name__}: {err}")
            continue
        for i in idx:
            value = got.get(uris[i], got.get(fsspec.core.strip_protocol(uris[i])))
            if not isinstance(value, bytes):
                out[i] = AudioError("missing", f"{type(value).__name__}: {value}")
            elif len(value) > limit:
                out[i] = AudioError("too_large", f"over {max_file_mb:g} MB")
            else:
                out[i] = value
    return out


def _infos(fs: fsspec.AbstractFileSystem, uris: list[str]) -> list[dict | BaseException]:
    """fsspec ``info`` of every URI (concurrently on an async filesystem such as s3fs);
    a failed lookup is its exception."""
    if isinstance(fs, AsyncFileSystem):
        coros = [fs._info(u) for u in uris]
        return sync(fs.loop, _run_coros_in_chunks, coros, return_exceptions=True)
    out = []
    for u in uris:
        try:
            out.append(fs.info(u))
        except Exception as err:  # noqa: BLE001 - the row's error, not the batch's
            out.append(err)
    return out


def _read_local(path: str, limit: int) -> bytes | Path | AudioError:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return AudioError("not_a_file", f"{path} is not a regular file")
        if info.st_size > limit:
            return AudioError("too_large", f"{info.st_size / 2**20:.0f} MB > {limit / 2**20:g} MB")
        if info.st_size > STREAM_MB * 2**20:
            return Path(path)
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        return AudioError(
            "missing", f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
        )


def clip_id(uri: str, start_s: float, end_s: float) -> str:
    """Stable id of a clip or segment: 20 hex chars of sha1(uri, start, end in ms)."""
    key = f"{uri}\x00{round(start_s * 1000)}\x00{round(end_s * 1000)}".encode()
    return hashlib.sha1(key).hexdigest()[:20]


def featurize_table(
    rows: pa.Table, cfg: FeatureConfig, max_file_mb: float = MAX_FILE_MB
) -> tuple[pa.Table, pa.Table]:
    """Featurize manifest rows (as :func:`pipeline.manifest.read_manifest` returns them).

    Never raises for a bad clip: each one becomes an error row with its reason. A
    binary ``audio`` column, where set, gives a row's file bytes inline (a request to a
    model server); its ``uri`` is then only the row's name.

    Returns:
        (features, errors) Arrow tables; features has one row per clip or segment.
    """
    carried = [c for c in rows.column_names if c not in ("row_index", "audio")]
    uris = rows.column("uri").to_pylist()
    starts = _optional(rows, "start_s")
    ends = _optional(rows, "end_s")
    payloads: list[Payload | None] = [None] * rows.num_rows
    if "audio" in rows.column_names:
        payloads = rows.column("audio").to_pylist()
    todo = [i for i, p in enumerate(payloads) if p is None]
    for i, fetched in zip(todo, fetch([uris[i] for i in todo], max_file_mb), strict=True):
        payloads[i] = fetched

    extract = extractor_for(cfg)
    take, meta, fbanks, errors = [], defaultdict(list), [], defaultdict(list)
    for i, (uri, payload) in enumerate(zip(uris, payloads, strict=True)):
        try:
            if isinstance(payload, AudioError):
                raise payload
            # One file's segments are kept aside until the whole file decoded: a bad
            # block later in the file makes the file one error row, as if decoded whole.
            mine, info = [], defaultdict(list)
            with (
                payload.open()
                if isinstance(payload, RemoteFile)
                else nullcontext(payload) as source,
                open_audio(source) as f,
            ):
                rate, channels = f.samplerate, f.channels
                for k, (a, b) in enumerate(_segments(f.frames, rate, starts[i], ends[i], cfg)):
                    # Block by block: the memory of a segment, not of the whole recording.
                    wave = prepare_blocks(read_blocks(f, int(a * rate), int(b * rate)), rate, cfg)
                    [fbank] = extract([wave], half=True)
                    del wave
                    if not np.isfinite(fbank).all():  # finite samples can still overflow
                        bad = int((~np.isfinite(fbank)).sum())
                        raise AudioError(
                            "non_finite_features", f"segment {k}: {bad} non-finite values"
                        )
                    mine.append(fbank)
                    for key, value in (
                        ("clip_id", clip_id(uri, a, b)),
                        ("segment_index", k),
                        ("start_s", a),
                        ("end_s", b),
                        ("duration_s", b - a),
                        ("source_sample_rate", rate),
                        ("source_channels", channels),
                    ):
                        info[key].append(value)
            take += [i] * len(mine)
            fbanks += mine
            for key, values in info.items():
                meta[key] += values
        except AudioError as err:
            _add_error(errors, rows, i, err.reason, err.detail)
        except Exception as err:  # noqa: BLE001 - one clip must never fail the batch
            logger.exception("unexpected error featurizing %s", uri)
            _add_error(errors, rows, i, "internal", f"{type(err).__name__}: {err}")

    features = _feature_table(
        rows.select(carried).take(pa.array(take, pa.int64())), meta, fbanks, cfg
    )
    return features, pa.table(
        {c: errors[c] for c in ERROR_COLUMNS},
        schema=pa.schema([(c, pa.string()) for c in ERROR_COLUMNS]),
    )


def featurize_rows(rows: pa.Table, cfg: FeatureConfig) -> pa.Table:
    """:func:`featurize_table` as one table, for consumers that keep their own errors table.

    Returns:
        Feature rows, then one row per bad input; ``reason`` and ``detail`` are null on
        feature rows and set on error rows (whose feature columns are null).
    """
    features, errors = featurize_table(rows, cfg)
    none = pa.nulls(features.num_rows, pa.string())
    features = features.append_column("reason", none).append_column("detail", none)
    return pa.concat_tables([features, errors], promote_options="default")


def _optional(rows: pa.Table, name: str) -> list[float | None]:
    if name in rows.column_names:
        return rows.column(name).to_pylist()
    return [None] * rows.num_rows


def _segments(
    n: int, rate: int, start: float | None, end: float | None, cfg: FeatureConfig
) -> list[tuple[float, float]]:
    """(start_s, end_s) pieces to featurize from a decoded file of n samples."""
    total = n / rate
    a = 0.0 if start is None or np.isnan(start) else float(start)
    b = total if end is None or np.isnan(end) else float(end)
    if not 0 <= a < b <= total + 1e-6:
        raise AudioError("bad_segment", f"segment [{a}, {b}] s outside audio of {total:.3f} s")
    b = min(b, total)
    if cfg.segment_s is None or b - a <= cfg.segment_s:
        return [(a, b)]
    cuts = list(np.arange(a, b, cfg.segment_s))
    if b - cuts[-1] < cfg.min_segment_s and len(cuts) > 1:
        cuts.pop()  # merge a short tail into the previous segment
    return [(float(s), float(e)) for s, e in zip(cuts, cuts[1:] + [b], strict=True)]


def _add_error(errors: dict, rows: pa.Table, i: int, reason: str, detail: str) -> None:
    errors["path"].append(rows.column("path")[i].as_py())
    errors["uri"].append(rows.column("uri")[i].as_py())
    errors["reason"].append(reason)
    errors["detail"].append(detail[:1000])


def _feature_table(
    carried: pa.Table, meta: dict, fbanks: list[np.ndarray], cfg: FeatureConfig
) -> pa.Table:
    F = cfg.num_mel_bins
    frames = np.array([f.shape[0] for f in fbanks], dtype=np.int32)
    flat = np.concatenate([f.reshape(-1) for f in fbanks]) if fbanks else np.zeros(0, np.float16)
    offsets = np.concatenate([[0], np.cumsum(frames.astype(np.int64) * F)]).astype(np.int32)
    columns = {
        "clip_id": pa.array(meta["clip_id"], pa.string()),
        "segment_index": pa.array(meta["segment_index"], pa.int32()),
        "start_s": pa.array(meta["start_s"], pa.float64()),
        "end_s": pa.array(meta["end_s"], pa.float64()),
        "duration_s": pa.array(meta["duration_s"], pa.float64()),
        "source_sample_rate": pa.array(meta["source_sample_rate"], pa.int32()),
        "source_channels": pa.array(meta["source_channels"], pa.int16()),
        "num_frames": pa.array(frames, pa.int32()),
        "num_mel_bins": pa.array(np.full(len(fbanks), F, np.int16), pa.int16()),
        "fbank": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
    }
    table = carried.drop_columns([c for c in ("start_s", "end_s") if c in carried.column_names])
    for name in feature_columns():
        table = table.append_column(name, columns[name])
    return table
