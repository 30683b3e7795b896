"""Stored feature rows -> fixed-length, normalised model input (and targets).

The original SSAST loader's rules (reference section 6): zero-pad at the end in the raw
log-mel domain or keep the first ``target_frames`` frames, then ``(x - mean) / (2 std)``.
Shapes: B batch, T target frames, F mel bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.labels import LabelSet
from pipeline.normalization import Normalization

MODEL_INPUT_COLUMNS = ("fbank", "num_frames", "num_mel_bins")
"""The feature columns :func:`to_model_input` reads."""


def fixed_length(
    column: pa.ChunkedArray | pa.Array,
    num_frames: np.ndarray,
    num_mel_bins: int,
    target_frames: int,
) -> np.ndarray:
    """Flat ``fbank`` lists -> (B, T, F) float32, zero-padded at the end or cut to T.

    Vectorised over the batch: one scatter from the flat value buffer, no per-row loop.
    """
    frames = np.asarray(num_frames, dtype=np.int64)
    starts = np.cumsum(frames) - frames  # first frame of each row
    return _gather(column, num_mel_bins, starts, np.minimum(frames, target_frames), target_frames)


def _gather(
    column: pa.ChunkedArray | pa.Array,
    F: int,
    first: np.ndarray,
    keep: np.ndarray,
    target_frames: int,
) -> np.ndarray:
    """(W, T, F) float32: output w holds frames first[w] .. first[w] + keep[w] of the flat
    ``fbank`` values (frame indices over the whole column), zero after them."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)  # (sum m_i * F,) float16
    W = keep.size
    out = np.zeros((W, target_frames, F), np.float32)
    row = np.repeat(np.arange(W), keep)  # (total kept,)
    t = np.arange(keep.sum()) - np.repeat(np.cumsum(keep) - keep, keep)  # frame in output
    src = (np.repeat(first, keep) + t) * F  # offset of each kept frame in values
    out[row, t] = values[src[:, None] + np.arange(F)]  # (kept, F) gather
    return out


@dataclass(frozen=True)
class Windows:
    """Fixed-length windows over variable-length rows (the model input of long clips)."""

    fbank: np.ndarray
    """(W, T, F) normalised model input, windows of row 0 first."""
    row: np.ndarray
    """(W,) the row each window comes from."""
    start: np.ndarray
    """(W,) first frame of each window within its row."""
    frames: np.ndarray
    """(W,) frames of real audio in each window (the rest is padding)."""


def window_starts(num_frames: int, target_frames: int, hop: int) -> np.ndarray:
    """First frames of the windows over a row of ``num_frames``: 0, hop, 2 hop, ... until
    a window reaches the row's end (the last one is padded); one window for a short row."""
    n = 1 + max(0, -(-(num_frames - target_frames) // hop))
    return np.arange(n, dtype=np.int64) * hop


def to_windows(batch: pa.Table, target_frames: int, hop: int, norm: Normalization) -> Windows:
    """A batch of feature rows -> windows of ``target_frames`` every ``hop`` frames,
    normalised like :func:`to_model_input` (a row that fits gives exactly its
    :func:`to_model_input` row; with clip_mean every window takes its clip's mean)."""
    if hop < 1:
        raise ValueError(f"hop must be >= 1 frame, got {hop}")
    F = int(batch.column("num_mel_bins")[0].as_py()) if batch.num_rows else 128
    frames = batch.column("num_frames").to_numpy().astype(np.int64)
    row_first = np.cumsum(frames) - frames
    per_row = [window_starts(m, target_frames, hop) for m in frames]
    row = np.repeat(np.arange(frames.size), [len(s) for s in per_row])
    start = np.concatenate(per_row) if per_row else np.zeros(0, np.int64)
    keep = np.minimum(frames[row] - start, target_frames)
    x = _gather(batch.column("fbank"), F, row_first[row] + start, keep, target_frames)
    means = clip_means(batch.column("fbank"), frames, F)[row] if norm.clip_mean else None
    return Windows(norm.apply(x, keep, means), row, start, keep)


def auto_target_frames(num_frames: np.ndarray, multiple: int = 16) -> int:
    """A model length that fits a dataset: the 95th percentile of its clip lengths in
    frames, rounded up to a multiple of ``multiple`` (the patch's time size)."""
    p95 = float(np.percentile(np.asarray(num_frames), 95))
    return max(multiple, int(math.ceil(p95 / multiple) * multiple))


def clip_means(column: pa.ChunkedArray | pa.Array, num_frames: np.ndarray, F: int) -> np.ndarray:
    """(B, F) each row's mean log-mel per mel bin over all its frames."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    frames = np.asarray(num_frames, np.int64)
    if frames.size == 0:
        return np.zeros((0, F), np.float64)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, F)
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]])
    return np.add.reduceat(values, starts, axis=0) / frames[:, None]


def to_model_input(batch: pa.Table, target_frames: int, norm: Normalization) -> np.ndarray:
    """A batch of feature rows -> (B, T, F) float32, normalised."""
    F = int(batch.column("num_mel_bins")[0].as_py()) if batch.num_rows else 128
    frames = batch.column("num_frames").to_numpy()
    x = fixed_length(batch.column("fbank"), frames, F, target_frames)
    means = clip_means(batch.column("fbank"), frames, F) if norm.clip_mean else None
    return norm.apply(x, np.minimum(frames, target_frames), means)


@dataclass(frozen=True)
class ModelInput:
    """How feature rows become a model's input: its length, its normalisation and, for
    labelled rows, its classes. One object from the driver to the Ray tasks and actors."""

    target_frames: int
    normalization: Normalization
    labels: LabelSet | None = None
    """With labels, :meth:`prepare` also encodes the label column as targets."""

    def prepare(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Feature rows -> {"fbank": (B, T, F) normalised float32[, "target": (B, K)]}."""
        out = {"fbank": to_model_input(batch, self.target_frames, self.normalization)}
        if self.labels is not None:
            out["target"] = self.labels.encode(batch.column(self.labels.column).to_pylist())
        return out
