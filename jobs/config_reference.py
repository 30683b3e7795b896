"""The configuration reference: every key of every job, generated from the config classes.

    .venv/bin/python -m jobs.config_reference            # print it
    .venv/bin/python -m jobs.config_reference --write    # regenerate docs/configuration.md

The field docstrings in the dataclasses are the single source; `tests/test_configs.py`
fails when docs/configuration.md is out of date.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from typing import Any

from jobs.evaluation.config import BenchmarkConfig
from jobs.finetuning.config import FinetuneConfig
from jobs.inference.config import PredictConfig
from jobs.kit.cli import ROOT
from jobs.kit.config import to_dict
from jobs.pretraining.config import PretrainConfig
from jobs.tuning.config import TuneJobConfig
from pipeline.featurize import FeaturizeConfig

DOC = ROOT / "docs" / "configuration.md"

JOBS: tuple[tuple[str, type], ...] = (
    ("jobs/featurize.py", FeaturizeConfig),
    ("jobs/pretrain.py", PretrainConfig),
    ("jobs/finetune.py", FinetuneConfig),
    ("jobs/tune.py", TuneJobConfig),
    ("jobs/predict.py, jobs/evaluate.py", PredictConfig),
    ("jobs/benchmark.py", BenchmarkConfig),
)
"""(entry points, config class) in the order of the reference."""

HEADER = """\
# Configuration reference

Generated from the config classes by `.venv/bin/python -m jobs.config_reference --write`;
do not edit by hand. Every job reads `--config FILE` (YAML, nested sections; omitted keys
keep the defaults below), then `key=value` overrides with the dotted keys of this page.
`--print-config` prints the resolved config and exits. An unknown key is an error that
suggests the closest valid key; a value of the wrong type or out of range is an error that
names the key.
"""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal after the field), over the MRO."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    """A reader's name for a field type: `int`, `int or null`, `one of: a, b`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def rows(config: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every leaf field of a config instance."""
    cls = type(config)
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(rows(value, f"{prefix}{f.name}."))
            continue
        out.append(
            (
                prefix + f.name,
                type_name(hints[f.name]),
                json.dumps(to_dict(value)),
                docs.get(f.name, ""),
            )
        )
    return out


def render() -> str:
    parts = [HEADER]
    for entry, cls in JOBS:
        parts.append(
            f"\n## `{entry}` ({cls.__name__})\n\n| key | type | default | meaning |\n"
            "|---|---|---|---|\n"
        )
        for key, tp, default, meaning in rows(cls()):
            cells = (f"`{key}`", tp, f"`{default}`", meaning)
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
