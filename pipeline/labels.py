"""Label cells -> class names -> multi-hot targets.

A label cell is a class name, a list of names, or (multi-label) names joined by a
delimiter ("dog,bark"). Shapes: B rows, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def split_label(value: Any, multilabel: bool, delimiter: str) -> list[str]:
    """One label cell -> its class names (a list cell, or a delimited string)."""
    if value is None:
        return []
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value]
    if multilabel:
        return [v.strip() for v in str(value).split(delimiter) if v.strip()]
    return [str(value)]


def unlabelled(values: list, multilabel: bool, delimiter: str) -> int:
    """Rows without a class (null or empty); an empty set is allowed with multilabel."""
    return 0 if multilabel else sum(1 for v in values if not any(split_label(v, False, "")))


def class_names(values: list, multilabel: bool, delimiter: str) -> list[str]:
    """The sorted set of class names in a label column."""
    return sorted({n for v in values for n in split_label(v, multilabel, delimiter) if n})


def encode_labels(
    values: list, names: list[str], multilabel: bool, delimiter: str, column: str = "label"
) -> np.ndarray:
    """Label column values -> (B, K) float32 multi-hot targets over ``names``.

    Raises:
        ValueError: a value names a class that is not in ``names``, or a single-label row
            has no label (it would otherwise be scored against no class).
    """
    index = {name: k for k, name in enumerate(names)}
    out = np.zeros((len(values), len(names)), np.float32)
    for i, value in enumerate(values):
        found = split_label(value, multilabel, delimiter)
        if not multilabel and not any(found):
            raise ValueError(f"{column} is empty in a row: every row needs a class")
        for name in found:
            if name not in index:
                raise ValueError(
                    f"{column} value {name!r} is not one of the model's "
                    f"{len(names)} classes {names[:10]}"
                )
            out[i, index[name]] = 1.0
    return out


@dataclass(frozen=True)
class LabelSet:
    """A classification task's classes and how its label column is read; saved with
    every fine-tuned model (checkpoint key ``task``)."""

    class_names: tuple[str, ...]
    multilabel: bool = False
    column: str = "label"
    delimiter: str = ","

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError(
                f"column {self.column!r} has {len(self.class_names)} class(es) "
                f"{list(self.class_names)}; a classifier needs at least 2"
            )

    def encode(self, values: list) -> np.ndarray:
        """(B, K) multi-hot targets of a batch of label cells."""
        return encode_labels(
            values, list(self.class_names), self.multilabel, self.delimiter, self.column
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "multilabel": self.multilabel,
            "label_column": self.column,
            "label_delimiter": self.delimiter,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSet:
        return cls(
            tuple(d["class_names"]),
            bool(d.get("multilabel", False)),
            d.get("label_column", "label"),
            d.get("label_delimiter", ","),
        )
