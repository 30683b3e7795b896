"""Classification metrics of fine-tuning, in numpy: accuracy, mAP, macro AUC, reports.

Shapes: N clips, K classes. ``scores`` are (N, K) model outputs (logits or probabilities:
only their order matters, except for accuracy's argmax), ``targets`` are (N, K) 0/1
(multi-hot; one-hot for single-label tasks).

Definitions follow scikit-learn (which the original SSAST code calls):
average precision is the step-wise area ``sum_n (R_n - R_{n-1}) P_n`` over distinct score
thresholds; AUC is the Mann-Whitney statistic with average ranks for ties. Classes without
positives or without negatives have no AP / AUC and are left out of the means.
"""

from __future__ import annotations

import numpy as np


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1: argmax of the scores equals argmax of the targets (the original's rule)."""
    return float(np.mean(scores.argmax(1) == targets.argmax(1))) if len(scores) else float("nan")


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K,) AP per class; NaN for a class with no positive clip."""
    return np.array([_ap(scores[:, k], targets[:, k] > 0.5) for k in range(scores.shape[1])])


def _ap(score: np.ndarray, positive: np.ndarray) -> float:
    P = int(positive.sum())
    if P == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, pos = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each threshold
    tp = np.cumsum(pos)[last]
    precision = tp / (last + 1)
    recall = tp / P
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K,) ROC AUC per class; NaN for a class with no positives or no negatives."""
    return np.array([_auc(scores[:, k], targets[:, k] > 0.5) for k in range(scores.shape[1])])


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    P = int(positive.sum())
    N = len(score) - P
    if P == 0 or N == 0:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - P * (P + 1) / 2) / (P * N))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # first index of each tie group
    ends = np.r_[starts[1:], len(s)]
    group_rank = (starts + ends + 1) / 2  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def confusion_matrix(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K, K) counts: row = true class (argmax of target), column = predicted class."""
    K = scores.shape[1]
    idx = targets.argmax(1) * K + scores.argmax(1)
    return np.bincount(idx, minlength=K * K).reshape(K, K)


def per_class_report(
    scores: np.ndarray, targets: np.ndarray, class_names: list[str]
) -> list[dict[str, float | str | int]]:
    """Precision, recall, F1, support, AP and AUC per class (single-label view: argmax)."""
    cm = confusion_matrix(scores, targets)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / cm.sum(0)
        recall = tp / cm.sum(1)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    return [
        {
            "class": name,
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(cm[k].sum()),
            "ap": float(ap[k]),
            "auc": float(auc[k]),
        }
        for k, name in enumerate(class_names)
    ]


def summary(scores: np.ndarray, targets: np.ndarray, prefix: str) -> dict[str, float]:
    """{prefix/accuracy, prefix/mAP, prefix/AUC}: the headline metrics of a split."""
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    return {
        f"{prefix}/accuracy": accuracy(scores, targets),
        f"{prefix}/mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        f"{prefix}/AUC": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
    }


def format_report(rows: list[dict]) -> str:
    """The per-class report as an aligned text table."""
    lines = [
        f"{'class':<20} {'prec':>6} {'recall':>6} {'f1':>6} {'AP':>6} {'AUC':>6} {'support':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['class'][:20]:<20} {r['precision']:6.3f} {r['recall']:6.3f} "
            f"{r['f1']:6.3f} {r['ap']:6.3f} {r['auc']:6.3f} {r['support']:7d}"
        )
    return "\n".join(lines)
