"""The prediction actor: one model per Ray actor; feature rows, audio or shard files in,
top-k labels, scores or embeddings out. Driven by jobs/inference/driver.py."""

from __future__ import annotations

from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.batches import ModelInput, Windows, to_windows
from pipeline.clips import featurize_rows
from pipeline.features import FeatureConfig
from pipeline.labels import LabelSet

ID_COLUMNS = ("path", "clip_id", "segment_index", "start_s", "end_s")
"""Columns copied from the input into every prediction row."""


def read_feature_file(
    uri: str, columns: list[str], where: tuple[str, Any] | None = None
) -> pa.Table:
    """The ``columns`` (those the file has) of one feature shard, local or remote; with
    ``where=(column, value)`` only the rows whose column equals value."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        shard = pq.ParquetFile(f)
        names = set(shard.schema_arrow.names)
        keep = [c for c in columns if c in names]
        if where is None:
            return shard.read(columns=keep)
        if where[0] not in names:
            raise ValueError(f"{uri} has no column {where[0]!r} to select rows by")
        table = shard.read(columns=list(dict.fromkeys([*keep, where[0]])))
    return table.filter(pc.equal(table.column(where[0]), pa.scalar(where[1]))).select(keep)


class Predictor:
    """Ray Data actor: one model, per batch top-k labels / all scores / embeddings.

    Args:
        payload: the checkpoint payload (or an ObjectRef of it).
        mode: "labels" (top_k names and probabilities), "scores" (all logits; with
            ``spec.labels`` also the targets), "embeddings" (mean-pooled tokens).
        spec: how feature rows become the model's input.
        source: what a batch holds. "rows": feature rows. "audio": manifest rows, which
            this actor decodes and featurizes with ``features`` (each clip stays in one
            process). "files": URIs of feature shards (column ``file``), which this actor
            reads itself (no Ray Data read tasks, which an actor pool holding every CPU
            would starve) and predicts in model batches.
        read: "files" only: {"columns": [...], "where": (column, value) or None, "batch_size"}.
        hop: clips longer than the model's input are cut into windows every ``hop`` frames
            whose outputs are averaged ("timestamps": one row per window); None: the first
            ``spec.target_frames`` only.
        frame_shift_s: seconds per frame (window times).
    """

    def __init__(
        self,
        payload,
        mode: str,
        spec: ModelInput,
        top_k: int = 5,
        use_gpu: bool = False,
        threads: int = 1,
        source: Literal["rows", "audio", "files"] = "rows",
        features: FeatureConfig | None = None,
        read: dict | None = None,
        hop: int | None = None,
        frame_shift_s: float = 0.01,
    ) -> None:
        import torch

        from ssast import load_checkpoint

        if not isinstance(payload, dict):  # an ObjectRef (a model server has no Ray)
            import ray

            payload = ray.get(payload)
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_checkpoint(payload).to(self.device).eval()
        self.mode, self.spec, self.top_k = mode, spec, top_k
        self.hop, self.frame_shift_s = hop, frame_shift_s
        self.batch_size = read["batch_size"] if read else 32
        if mode == "timestamps" and hop is None:
            raise ValueError("mode=timestamps needs windows (a hop)")
        if (source == "audio") != (features is not None) or (source == "files") != bool(read):
            raise ValueError(f"source={source!r} needs features (audio) or read (files)")
        self.source, self.features, self.read = source, features, read
        task = payload.get("task") or {}
        self.labels = LabelSet.from_dict(task) if task.get("class_names") else None
        self.width = (
            self.model.encoder.embed_dim
            if self.embeds
            else getattr(self.model, "num_classes", self.model.encoder.embed_dim)
        )

    @property
    def embeds(self) -> bool:
        """Embeddings out: mode=embeddings, or timestamps of a model without a head."""
        return self.mode == "embeddings" or (
            self.mode == "timestamps" and not hasattr(self.model, "num_classes")
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.source == "audio":
            return self._predict(featurize_rows(batch, self.features))
        if self.source == "rows":
            return self._predict(batch)
        size = self.read["batch_size"]
        parts = []
        for uri in batch.column("file").to_pylist():
            rows = read_feature_file(uri, self.read["columns"], self.read["where"])
            # range(0, max(n, 1)): a file without matching rows still gives its columns
            parts += [
                self._predict(rows.slice(k, size)) for k in range(0, max(rows.num_rows, 1), size)
            ]
        return pa.concat_tables(parts)

    def _predict(self, batch: pa.Table) -> pa.Table:
        """Feature rows (+ reason/detail for rows that failed) -> prediction rows."""
        if "reason" not in batch.column_names:  # a featurized dataset: every row is good
            none = pa.nulls(batch.num_rows, pa.string())
            batch = batch.append_column("reason", none).append_column("detail", none)
        ok = np.asarray(batch.column("reason").is_null())
        out = batch.select(
            [c for c in (*ID_COLUMNS, "reason", "detail") if c in batch.column_names]
        )
        rows = batch.filter(pa.array(ok))
        target = None
        if self.spec.labels is not None and rows.num_rows:
            target = self.spec.labels.encode(rows.column(self.spec.labels.column).to_pylist())
        if self.hop is not None:
            windows = to_windows(rows, self.spec.target_frames, self.hop, self.spec.normalization)
            values = self._forward(windows.fbank)  # (W, K or D)
            if self.mode == "timestamps":
                return self._per_window(batch, out, ok, windows, values)
            # The mean of each clip's windows.
            counts = np.bincount(windows.row, minlength=rows.num_rows)[:, None]
            summed = np.zeros((rows.num_rows, values.shape[1]), np.float64)
            np.add.at(summed, windows.row, values)
            values = (summed / np.maximum(counts, 1)).astype(np.float32)
        else:
            values = self._forward(self.spec.prepare(rows)["fbank"])  # (B_ok, K or D)
        if target is None and self.spec.labels is not None:
            target = np.zeros((0, self.width), np.float32)
        return _attach(out, ok, self._columns(values, target))

    def _per_window(
        self, batch: pa.Table, out: pa.Table, ok: np.ndarray, windows: Windows, values
    ) -> pa.Table:
        """mode=timestamps: one row per window of every good clip (a failed clip keeps
        one row, with nulls), windows in time order."""
        counts = np.ones(len(ok), np.int64)
        counts[ok] = np.bincount(windows.row, minlength=int(ok.sum()))
        good = np.repeat(ok, counts)  # (rows out,) from a good clip
        out = out.take(pa.array(np.repeat(np.arange(len(ok)), counts)))
        offset = np.zeros(len(ok))
        if "start_s" in batch.column_names:  # a segment of a longer recording
            offset = batch.column("start_s").to_numpy(zero_copy_only=False).astype(np.float64)
        owner = np.flatnonzero(ok)[windows.row]
        start = offset[owner] + windows.start * self.frame_shift_s
        columns = {
            "window_index": pa.array(windows.start // self.hop, pa.int32()),
            "window_start_s": pa.array(start),
            "window_end_s": pa.array(start + windows.frames * self.frame_shift_s),
            **self._columns(values, None),
        }
        return _attach(out, good, columns)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """(N, T, F) model input -> (N, K or D) outputs, in model batches."""
        import torch

        out = []
        with torch.no_grad():
            for k in range(0, len(x), self.batch_size):
                fbank = torch.from_numpy(x[k : k + self.batch_size]).to(self.device)
                out.append(self._call_model(fbank).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.width), np.float32)

    def _call_model(self, fbank):
        if self.embeds:
            if hasattr(self.model, "embed"):
                return self.model.embed(fbank)
            return self.model.encode(fbank).mean(dim=1)
        return self.model(fbank)

    def _columns(self, values: np.ndarray, target: np.ndarray | None) -> dict[str, pa.Array]:
        if self.embeds:
            return {"embedding": _list_array(values)}
        if self.mode == "scores":
            cols = {"scores": _list_array(values)}
            if target is not None:
                cols["target"] = _list_array(target)
            return cols
        probs = _probabilities(values, bool(self.labels and self.labels.multilabel))
        k = min(self.top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, k)
        names = np.asarray(
            self.labels.class_names if self.labels else [str(i) for i in range(probs.shape[1])]
        )
        return {
            "top_labels": pa.array(names[top].tolist(), pa.list_(pa.string())),
            "top_scores": _list_array(np.take_along_axis(probs, top, axis=1)),
        }


def _attach(out: pa.Table, ok: np.ndarray, columns: dict[str, pa.Array]) -> pa.Table:
    """Append prediction columns, with nulls on rows that failed featurization."""
    if ok.all():
        for name, col in columns.items():
            out = out.append_column(name, col)
        return out
    where = np.cumsum(ok) - 1  # index among good rows
    for name, col in columns.items():
        if len(col) == 0:
            out = out.append_column(name, pa.nulls(len(ok), col.type))
            continue
        idx = pa.array(np.where(ok, where, 0), pa.int64())
        taken = col.take(idx)
        out = out.append_column(
            name, pc.if_else(pa.array(ok), taken, pa.nulls(len(ok), taken.type))
        )
    return out


def _list_array(values: np.ndarray) -> pa.Array:
    """(B, K) float -> list<float32> column."""
    values = np.ascontiguousarray(values, np.float32)
    offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


def _probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
