"""Manifest rows -> feature rows and error rows. Plain Arrow + NumPy, no Ray.

This is the unit of work of both the sharded job and the streaming graph: fetch the
bytes of a batch of rows, decode, cut segments, resample, compute fbank for all clips in
one pass, and return two Arrow tables (features and errors) in the documented schema.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.audio import AudioError, decode
from pipeline.features import FbankExtractor, FeatureConfig, prepare_waveform
from pipeline.schema import ERROR_COLUMNS, feature_columns

logger = logging.getLogger(__name__)

_EXTRACTORS: dict[FeatureConfig, FbankExtractor] = {}


def extractor_for(cfg: FeatureConfig) -> FbankExtractor:
    """One cached extractor per config and process (mel banks are built once)."""
    if cfg not in _EXTRACTORS:
        _EXTRACTORS[cfg] = FbankExtractor(cfg)
    return _EXTRACTORS[cfg]


def fetch(uris: Sequence[str]) -> list[bytes | str]:
    """Read every URI; an unreadable one gives its error message (str) instead of bytes.

    Remote URIs of one filesystem are fetched concurrently (fsspec ``cat``).
    """
    out: list[bytes | str] = [""] * len(uris)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        groups[uri.split("://", 1)[0] if "://" in uri else "file"].append(i)
    for protocol, idx in groups.items():
        fs = fsspec.filesystem(protocol)
        if protocol == "file":
            for i in idx:
                try:
                    with open(uris[i], "rb") as f:
                        out[i] = f.read()
                except OSError as err:
                    out[i] = f"{type(err).__name__}: {err.strerror or err}"
            continue
        got = fs.cat([uris[i] for i in idx], on_error="return")  # keys lose the protocol
        for i in idx:
            value = got.get(uris[i], got.get(fsspec.core.strip_protocol(uris[i])))
            out[i] = value if isinstance(value, bytes) else f"{type(value).__name__}: {value}"
    return out


def clip_id(uri: str, start_s: float, end_s: float) -> str:
    """Stable id of a clip or segment: 20 hex chars of sha1(uri, start, end in ms)."""
    key = f"{uri}\x00{round(start_s * 1000)}\x00{round(end_s * 1000)}".encode()
    return hashlib.sha1(key).hexdigest()[:20]


def featurize_table(rows: pa.Table, cfg: FeatureConfig) -> tuple[pa.Table, pa.Table]:
    """Featurize manifest rows (as :func:`pipeline.manifest.read_manifest` returns them).

    Never raises for a bad clip: each one becomes an error row with its reason.

    Returns:
        (features, errors) Arrow tables; features has one row per clip or segment.
    """
    carried = [c for c in rows.column_names if c != "row_index"]
    uris = rows.column("uri").to_pylist()
    starts = _optional(rows, "start_s")
    ends = _optional(rows, "end_s")
    payloads = fetch(uris)

    take, meta, waves, errors = [], defaultdict(list), [], defaultdict(list)
    for i, (uri, payload) in enumerate(zip(uris, payloads, strict=True)):
        try:
            if isinstance(payload, str):
                raise AudioError("missing", payload)
            samples, rate = decode(payload)
            for k, (a, b) in enumerate(_segments(samples.shape[0], rate, starts[i], ends[i], cfg)):
                wave = prepare_waveform(samples[int(a * rate) : int(b * rate)], rate, cfg)
                take.append(i)
                waves.append(wave)
                meta["clip_id"].append(clip_id(uri, a, b))
                meta["segment_index"].append(k)
                meta["start_s"].append(a)
                meta["end_s"].append(b)
                meta["duration_s"].append(b - a)
                meta["source_sample_rate"].append(rate)
                meta["source_channels"].append(samples.shape[1])
        except AudioError as err:
            _add_error(errors, rows, i, err.reason, err.detail)
        except Exception as err:  # noqa: BLE001 - one clip must never fail the batch
            logger.exception("unexpected error featurizing %s", uri)
            _add_error(errors, rows, i, "internal", f"{type(err).__name__}: {err}")

    fbanks = extractor_for(cfg)(waves, half=True) if waves else []
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
