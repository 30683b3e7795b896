"""The evaluation suite's plan and table for encoder groups (``--encoder NAME=REF``): the
spread of a group covers its members (e.g. pretraining seeds) and the seeds of each."""

import copy

import numpy as np
import pytest
import torch

from jobs.evaluation.config import BenchmarkConfig
from jobs.evaluation.driver import (
    Encoder,
    count_runs,
    format_table,
    parse_encoder,
    plan_runs,
    run_key,
    summarize,
    summary_metrics,
    weights_sha1,
)
from jobs.finetuning.config import FinetuneConfig
from jobs.kit.cli import ROOT
from jobs.kit.config import load_config
from pipeline.features import FeatureConfig
from pipeline.normalization import Normalization
from ssast import SSAST, SSASTConfig
from ssast.checkpoint import checkpoint_payload


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
    # What the child run of a group logs (a benchmark of groups failed here once, after
    # all its runs: a member's means were passed on as one metric).
    params, metrics = summary_metrics(tuned)
    assert params == {"member0": "a.pt", "member1": "b.pt"}
    assert metrics == pytest.approx(
        {
            "test/accuracy_mean": 0.65,
            "test/accuracy_std": np.std([0.7, 0.9, 0.4, 0.6]),
            "test/accuracy_n": 4,
            "test/accuracy_members": 2,
            "test/accuracy_between_std": 0.15,
            "test/accuracy_member0": 0.8,
            "test/accuracy_member1": 0.5,
        }
    )
    assert summary_metrics(stats[("events", "finetune", "scratch")])[0] == {}
    table = format_table(rows)
    assert "| events | 0.500 ± 0.000 (1) |" in table
    assert "0.650 ± 0.180 (4)" in table and "pre: 2 encoders, a.pt, b.pt" in table
    assert "- events finetune: 0.800 / 0.500 (each encoder's mean; std between them 0.150)" in table
    assert "scratch:" not in table  # a bare reference is its own column, no footnote


def test_a_run_key_follows_the_inputs_not_the_names():
    """The key under which a finished run is kept (and reused) changes with anything the
    score depends on: the data, the encoder's weights, the seed, length, normalisation,
    recipe; renaming the task, column or reference keeps it; a table says what was reused."""
    torch.manual_seed(0)
    payload = checkpoint_payload(SSAST(SSASTConfig(size="tiny", input_tdim=64, num_masked=2)))
    weights = weights_sha1(payload)
    assert weights == weights_sha1(copy.deepcopy(payload))
    changed = copy.deepcopy(payload)
    changed["state_dict"]["encoder.pos_embed"][0, 0, 0] += 1e-6
    assert weights_sha1(changed) != weights
    stats = Normalization(mean=-4.0, std=4.0)
    recipe = load_config(FinetuneConfig, ROOT / "jobs/configs/finetune_small.yaml", [])
    spec = {"method": "finetune", "seed": 0, "input_tdim": 64, "normalization": stats}
    spec |= {"recipe": recipe, "task": "events", "encoder": "pre", "member": "a.pt"}
    key = run_key(spec, "data", weights)
    assert key == run_key(spec | {"task": "x", "encoder": "y", "member": "z"}, "data", weights)
    for other in (
        run_key(spec, "other data", weights),
        run_key(spec, "data", weights_sha1(changed)),
        run_key(spec | {"seed": 1}, "data", weights),
        run_key(spec | {"input_tdim": 80}, "data", weights),
        run_key(
            spec | {"normalization": Normalization(mean=-4.0, std=4.0, clip_mean=True)},
            "data",
            weights,
        ),
        run_key(
            spec
            | {
                "recipe": load_config(
                    FinetuneConfig, ROOT / "jobs/configs/finetune_small.yaml", ["optim.lr=3e-4"]
                )
            },
            "data",
            weights,
        ),
        run_key(spec | {"method": "probe", "layers": "last", "batch_size": 32}, "data", weights),
    ):
        assert other != key
    base = {"method": "baseline", "seed": 0}
    assert run_key(base, "data", "-") == run_key(base | {"input_tdim": 9}, "data", "w")
    rows = [
        {"task": "t", "method": m, "member": "a.pt", "seed": 0, "reused": True}
        for m in ("probe", "probe@1", "probe@2")
    ] + [{"task": "t", "method": "finetune", "member": "a.pt", "seed": 0, "reused": False}]
    assert count_runs(rows) == (2, 1)
