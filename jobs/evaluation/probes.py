"""What the evaluation suite fits on top of features: the pooled-fbank baseline and the
linear probe, one multinomial logistic regression for both.

Shapes: N clips, F mel bins, D embedding width, K classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.optimize import minimize

from jobs.kit.datasets import read_rows
from pipeline.batches import MODEL_INPUT_COLUMNS
from pipeline.labels import class_names
from pipeline.normalization import Normalization
from pipeline.schema import column_sha1, load_dataset_info

SPLITS = ("train", "valid", "test")

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
"""L2 strengths tried; the valid split picks one (never the test split)."""


def pooled_fbank(rows: pa.Table) -> np.ndarray:
    """(N, 3F) mean, std and max of each mel bin over each clip's own frames (no padding):
    the trivial baseline's features, straight from the stored ``fbank`` column."""
    F = int(rows.column("num_mel_bins")[0].as_py())
    frames = rows.column("num_frames").to_numpy().astype(np.int64)  # (N,)
    fbank = rows.column("fbank").combine_chunks()
    values = fbank.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, F)
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]])  # first frame of each clip
    total = np.add.reduceat(values, starts, axis=0)  # (N, F)
    mean = total / frames[:, None]
    sq = np.add.reduceat(values**2, starts, axis=0) / frames[:, None]
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    peak = np.maximum.reduceat(values, starts, axis=0)
    return np.concatenate([mean, std, peak], axis=1).astype(np.float32)


@dataclass(frozen=True)
class LinearProbe:
    """Standardisation, then a multinomial logistic regression: scores = z W^T + b."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    l2: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, K) logits."""
        z = (x - self.mean) / self.scale
        return z @ self.weight.T + self.bias


def fit_logistic(
    x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, max_iter: int = 500
) -> LinearProbe:
    """Minimise mean cross-entropy + l2 / 2 * ||W||^2 (bias not penalised) over
    standardised features, full batch in float64 (deterministic): L-BFGS (scipy's,
    compiled) on the loss and its gradient written out, (softmax - one-hot) / N.

    The same optimum as scikit-learn's ``LogisticRegression(C=1 / (l2 * N))``.
    """
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = (x - mean) / scale  # (N, D) float64
    N, D = z.shape
    K = num_classes
    onehot = np.eye(K)[np.asarray(y, np.int64)]  # (N, K)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: K * D].reshape(K, D), theta[K * D :]
        s = z @ w.T + b
        s -= s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))  # (N, K)
        loss = -(logp * onehot).sum() / N + 0.5 * l2 * (w * w).sum()
        g = (np.exp(logp) - onehot) / N  # d loss / d scores
        return loss, np.concatenate([(g.T @ z + l2 * w).ravel(), g.sum(axis=0)])

    found = minimize(
        loss_and_grad,
        np.zeros(K * D + K),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-14, "maxcor": 20},
    )
    w, b = found.x[: K * D].reshape(K, D), found.x[K * D :]
    return LinearProbe(mean, scale, w, b, l2)


def select_and_fit(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    grid: tuple[float, ...] = L2_GRID,
) -> LinearProbe:
    """The probe of the L2 strength with the best valid accuracy (ties: the stronger)."""
    best, best_acc = None, -1.0
    for l2 in sorted(grid, reverse=True):
        probe = fit_logistic(*train, num_classes, l2)
        acc = accuracy(probe.scores(valid[0]), valid[1])
        if acc > best_acc:
            best, best_acc = probe, acc
    return best


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(scores.argmax(axis=1) == y)) if len(y) else float("nan")


@dataclass(frozen=True)
class LabelledSet:
    """A labelled featurized dataset in memory, as every probe reads it: its feature rows,
    each row's class index and split (train: fit, valid: pick L2, test: score)."""

    rows: pa.Table
    y: np.ndarray  # (N,) class index
    split: np.ndarray  # (N,) split name
    num_classes: int
    num_mel_bins: int
    statistics: Normalization

    @classmethod
    def read(cls, data: str) -> LabelledSet:
        """Read ``data`` (label and split columns). ValueError when a split is missing."""
        info = load_dataset_info(data)
        rows = read_rows(info.features_dir, [*MODEL_INPUT_COLUMNS, "label", "split"])
        labels = rows.column("label").to_pylist()
        index = {n: k for k, n in enumerate(class_names(labels, False, ","))}
        split = np.array(rows.column("split").to_pylist())
        for name in SPLITS:
            if not (split == name).any():
                raise ValueError(f"{data} has no rows with split == {name!r}")
        return cls(
            rows,
            np.array([index[v] for v in labels]),
            split,
            len(index),
            info.feature_config.num_mel_bins,
            info.statistics,
        )

    def sha1(self) -> str:
        """sha1 of the rows (features, label, split): what a run on them depends on."""
        columns = {c: column_sha1(self.rows.column(c)) for c in sorted(self.rows.column_names)}
        return hashlib.sha1(json.dumps(columns, sort_keys=True).encode()).hexdigest()

    def fit(self, x: np.ndarray) -> dict[str, float]:
        """Probe features ``x`` (N, D) of these rows: {valid/accuracy, test/accuracy, l2}."""
        part = {s: (x[self.split == s], self.y[self.split == s]) for s in SPLITS}
        probe = select_and_fit(part["train"], part["valid"], self.num_classes)
        return {
            f"{s}/accuracy": accuracy(probe.scores(part[s][0]), part[s][1])
            for s in ("valid", "test")
        } | {"l2": probe.l2}
