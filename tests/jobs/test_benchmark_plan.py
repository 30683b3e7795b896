"""The evaluation suite's plan and table for encoder groups (``--encoder NAME=REF``): the
spread of a group covers its members (e.g. pretraining seeds) and the seeds of each."""

import numpy as np
import pytest

from jobs.evaluation.config import BenchmarkConfig
from jobs.evaluation.driver import (
    Encoder,
    format_table,
    parse_encoder,
    plan_runs,
    summarize,
)
from pipeline.features import FeatureConfig


def test_parse_encoder_names_groups_and_leaves_paths_alone():
    assert parse_encoder("pre=runs/a/ssast.pt") == ("pre", "runs/a/ssast.pt")
    assert parse_encoder("pre=s3://b/k=v/ssast.pt") == ("pre", "s3://b/k=v/ssast.pt")
    for ref in ("runs/a/ssast.pt", "./k=v/ssast.pt", "s3://b/k=v/x.pt", "runs:/abc/model"):
        assert parse_encoder(ref) == (ref, ref)
    with pytest.raises(ValueError, match="--encoder scratch"):
        parse_encoder("pre=scratch")


def test_a_group_pools_its_members_runs():
    encoders = [
        Encoder("pre", "a.pt", {}, FeatureConfig(), None),
        Encoder("pre", "b.pt", {}, FeatureConfig(), None),
        Encoder("scratch", "scratch", None, FeatureConfig(), None),
    ]
    cfg = BenchmarkConfig(methods=("baseline", "probe", "finetune"), num_seeds=2)
    runs = plan_runs(["events"], encoders, cfg)
    got = [(r["method"], r["encoder"], r["member"], r["seed"]) for r in runs]
    assert got == [
        ("baseline", "-", "-", 0),
        ("probe", "pre", "a.pt", 0),  # a trained encoder's probe is deterministic: once
        ("probe", "pre", "b.pt", 0),
        ("probe", "scratch", "scratch", 0),
        ("probe", "scratch", "scratch", 1),
        ("finetune", "pre", "a.pt", 0),
        ("finetune", "pre", "a.pt", 1),
        ("finetune", "pre", "b.pt", 0),
        ("finetune", "pre", "b.pt", 1),
        ("finetune", "scratch", "scratch", 0),
        ("finetune", "scratch", "scratch", 1),
    ]
    accuracy = [0.5, 0.6, 0.8, 0.2, 0.3, 0.7, 0.9, 0.4, 0.6, 0.1, 0.2]
    rows = [r | {"test/accuracy": a} for r, a in zip(runs, accuracy, strict=True)]
    stats = summarize(rows)
    tuned = stats[("events", "finetune", "pre")]
    assert tuned["n"] == 4 and tuned["members"] == 2
    assert tuned["mean"] == pytest.approx(0.65)
    assert tuned["std"] == pytest.approx(np.std([0.7, 0.9, 0.4, 0.6]))
    assert stats[("events", "probe", "pre")]["std"] == pytest.approx(0.1)
    assert tuned["member_means"] == pytest.approx({"a.pt": 0.8, "b.pt": 0.5})
    assert tuned["between_std"] == pytest.approx(0.15)
    assert "member_means" not in stats[("events", "finetune", "scratch")]
    table = format_table(rows)
    assert "| events | 0.500 ± 0.000 (1) |" in table
    assert "0.650 ± 0.180 (4)" in table and "pre: 2 encoders, a.pt, b.pt" in table
    assert "- events finetune: 0.800 / 0.500 (each encoder's mean; std between them 0.150)" in table
    assert "scratch:" not in table  # a bare reference is its own column, no footnote
