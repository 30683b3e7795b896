"""The fine-tuning task: what a labelled featurized dataset asks of the classifier.

Read once on the driver (:func:`read_task`), validated before any worker starts, then
handed to the workers and saved with the model (:meth:`Task.saved`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import fsspec
import pyarrow.parquet as pq

from jobs.finetuning.config import FinetuneConfig
from jobs.kit.datasets import read_rows, shard_files
from pipeline.labels import LabelSet, class_names, unlabelled
from pipeline.normalization import Normalization, choose_normalization
from pipeline.schema import DatasetInfo


@dataclass(frozen=True)
class Task:
    labels: LabelSet
    normalization: Normalization
    loss: Literal["ce", "bce"]
    """ce: cross-entropy (soft targets under mixup); bce: logits BCE (multi-label)."""
    metric: Literal["accuracy", "mAP"]
    """Validation metric for model selection and early stopping."""
    rows: dict[str, int]
    """Rows per split value (train, valid, test), after data.limit."""
    train_split: str

    @property
    def train_rows(self) -> int:
        return self.rows[self.train_split]

    @property
    def num_classes(self) -> int:
        return len(self.labels.class_names)

    def saved(self) -> dict:
        """What prediction needs, saved with the model as its ``task``."""
        return {**self.labels.to_dict(), "loss": self.loss, "metric": self.metric}


def resolve_task(
    cfg: FinetuneConfig, labels: LabelSet, normalization: Normalization, rows: dict[str, int]
) -> Task:
    """The task's loss and metric (``auto``: by single- or multi-label) around its labels."""
    t = cfg.train
    loss = t.loss if t.loss != "auto" else ("bce" if labels.multilabel else "ce")
    metric = t.metric if t.metric != "auto" else ("mAP" if labels.multilabel else "accuracy")
    return Task(labels, normalization, loss, metric, rows, cfg.data.train_split)


def split_counts(splits: list, cfg: FinetuneConfig) -> dict[str, int]:
    """Rows per configured split value, capped by data.limit."""
    d = cfg.data
    counts = {
        s: sum(1 for x in splits if x == s) for s in (d.train_split, d.valid_split, d.test_split)
    }
    if d.limit is not None:
        counts = {s: min(n, d.limit) for s, n in counts.items()}
    return counts


def check_splits(counts: dict[str, int], found: list, cfg: FinetuneConfig, where: str) -> None:
    """ValueError when the train or valid split is empty."""
    d = cfg.data
    for split in (d.train_split, d.valid_split):
        if counts[split] == 0:
            raise ValueError(
                f"{where}: no rows with {d.split_column} == {split!r}; found "
                f"{sorted({str(s) for s in found})}; set data.train_split / "
                "data.valid_split or add the split to the manifest"
            )


def read_task(info: DatasetInfo, cfg: FinetuneConfig) -> Task:
    """Class names (sorted, from every split), rows per split, normalisation, loss, metric.

    Raises:
        ValueError: the label or split column is missing, the train / valid split is
            empty, or there are fewer than two classes.
    """
    d = cfg.data
    files = shard_files(info.features_dir)
    fs, first = fsspec.core.url_to_fs(files[0])
    with fs.open(first, "rb") as f:
        schema = pq.read_schema(f)
    for name, key in ((d.label_column, "data.label_column"), (d.split_column, "data.split_column")):
        if name not in schema.names:
            raise ValueError(
                f"{info.root}: no column {name!r} ({key}); the features have "
                f"{[c for c in schema.names if c != 'fbank']}"
            )
    # The shard files only: leftovers of an interrupted write are not part of the data.
    table = read_rows(info.features_dir, [d.label_column, d.split_column])
    values, splits = table.column(0).to_pylist(), table.column(1).to_pylist()
    counts = split_counts(splits, cfg)
    check_splits(counts, splits, cfg, info.root)
    used = [v for v, s in zip(values, splits, strict=True) if s in counts]
    missing = unlabelled(used, d.multilabel, d.label_delimiter)
    if missing:
        raise ValueError(
            f"{info.root}: {missing} of the {len(used)} rows of splits {list(counts)} have no "
            f"{d.label_column!r} value "
            "(null or empty); label them, or drop them from the manifest and featurize again"
        )
    try:
        labels = LabelSet(
            tuple(class_names(values, d.multilabel, d.label_delimiter)),
            d.multilabel,
            d.label_column,
            d.label_delimiter,
        )
    except ValueError as exc:
        raise ValueError(f"{info.root}: {exc}") from None
    norm = choose_normalization(d.normalization, dataset=info.statistics)
    norm = dataclasses.replace(norm, clip_mean=d.clip_mean)
    return resolve_task(cfg, labels, norm, counts)
