"""The evaluation suite job on a real local Ray with a real MLflow server."""

import json

import mlflow
import numpy as np
import pytest
import torch

from jobs import benchmark
from jobs.evaluation.probes import accuracy, select_and_fit
from jobs.evaluation.run import embed
from jobs.kit.datasets import read_rows
from pipeline.batches import MODEL_INPUT_COLUMNS, ModelInput, auto_target_frames
from pipeline.schema import load_dataset_info
from ssast import SSAST, SSASTConfig, save_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_benchmark_compares_an_encoder_with_scratch_and_the_baseline(
    featurized, sample_corpus, mlflow_server, tmp_path
):
    """Two tasks on the same clips (a featurized dataset, and its manifest featurized by
    the job) give the same numbers; the encoder's probe is the documented computation;
    scratch runs once per seed; MLflow has a parent and a child per task x method x
    encoder; an encoder given as NAME=REF is the column NAME."""
    data, _ = featurized
    manifest, _ = sample_corpus
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks:\n  features: {{data: {data}}}\n  audio: {{manifest: {manifest}}}\n")
    torch.manual_seed(3)
    encoder = tmp_path / "enc.pt"
    save_checkpoint(SSAST(SSASTConfig(size="tiny", input_tdim=256, num_masked=10)), encoder)
    recipe = tmp_path / "recipe.yaml"  # a short fine-tuning: two epochs
    recipe.write_text(
        "model: {input_tdim: auto}\noptim: {name: adamw, lr: 1.0e-3, schedule: cosine}\n"
        "train: {max_epochs: 2, batch_size: 8}\n"
    )
    out = tmp_path / "out"
    assert (
        benchmark.main(
            [
                "--encoder",
                f"pre={encoder}",
                "--encoder",
                "scratch",
                "--suite",
                str(suite),
                "--output",
                str(out),
                "num_seeds=2",
                "methods=[baseline,probe,finetune]",
                "probe_layers=all",
                f"finetune_config={recipe}",
                f"mlflow.tracking_uri={mlflow_server}",
            ]
        )
        == 0
    )

    runs = json.loads((out / "results.json").read_text())["runs"]
    key = {(r["task"], r["method"], r["encoder"], r["seed"]): r for r in runs}
    assert {r["member"] for r in runs if r["encoder"] == "pre"} == {str(encoder)}
    assert all(r["seconds"] > 0 for r in runs)
    # Per task: the baseline, the encoder's probe (+ 12 layers), scratch's probes (2
    # seeds, + 12 layers each), and fine-tuning of both encoders over 2 seeds.
    assert len(runs) == 2 * (1 + 13 + 2 * 13 + 2 * 2)
    for method, enc, seed in (
        ("baseline", "-", 0),
        ("probe", "pre", 0),
        ("probe", "scratch", 0),
        ("probe", "scratch", 1),
    ):
        a, b = key[("features", method, enc, seed)], key[("audio", method, enc, seed)]
        assert a["test/accuracy"] == pytest.approx(b["test/accuracy"]), (method, enc)

    # The encoder's probe, computed here: embeddings at the auto length, L2 by valid.
    info = load_dataset_info(data)
    rows = read_rows(info.features_dir, [*MODEL_INPUT_COLUMNS, "label", "split"])
    T = auto_target_frames(rows.column("num_frames").to_numpy())
    model = SSAST(SSASTConfig(size="tiny", input_tdim=256, num_masked=10))
    model.load_state_dict(torch.load(encoder, weights_only=True)["state_dict"])
    [x] = embed(model.adapted(input_tdim=T).eval(), rows, ModelInput(T, info.statistics), 8)
    names = sorted(set(rows.column("label").to_pylist()))
    y = np.array([names.index(v) for v in rows.column("label").to_pylist()])
    split = np.array(rows.column("split").to_pylist())
    probe = select_and_fit(
        (x[split == "train"], y[split == "train"]),
        (x[split == "valid"], y[split == "valid"]),
        len(names),
    )
    got = key[("features", "probe", "pre", 0)]
    assert got["input_tdim"] == T and got["l2"] == probe.l2
    assert got["test/accuracy"] == pytest.approx(
        accuracy(probe.scores(x[split == "test"]), y[split == "test"])
    )
    assert key[("features", "probe@12", "pre", 0)]["l2"] == got["l2"]
    # The first block's probe: its output captured by a hook, mean over the patch tokens.
    first, at_T = [], model.adapted(input_tdim=T).eval()
    at_T.encoder.blocks[0].register_forward_hook(lambda m, i, o: first.append(o[:, 2:].mean(1)))
    embed(at_T, rows, ModelInput(T, info.statistics), 8)
    x1 = torch.cat(first).double().numpy()
    probe1 = select_and_fit(
        (x1[split == "train"], y[split == "train"]),
        (x1[split == "valid"], y[split == "valid"]),
        len(names),
    )
    assert key[("features", "probe@1", "pre", 0)]["test/accuracy"] == pytest.approx(
        accuracy(probe1.scores(x1[split == "test"]), y[split == "test"])
    )
    tuned = [r for r in runs if r["method"] == "finetune"]
    assert {(r["encoder"], r["seed"]) for r in tuned} == {
        (e, s) for e in ("pre", "scratch") for s in (0, 1)
    }
    assert all(1 <= r["best_epoch"] <= 2 and 0 <= r["test/accuracy"] <= 1 for r in tuned)

    table = (out / "results.md").read_text()
    assert "baseline (pooled fbank)" in table and "probe: scratch" in table and "(2)" in table
    assert "probe: pre |" in table and f"pre: {encoder}" in table
    client = mlflow.MlflowClient(mlflow_server)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("ssast-benchmark").experiment_id],
        "attributes.run_name = 'benchmark'",
    )
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert parent.info.status == "FINISHED" and len(children) == 2 * (1 + 2 * 13 + 2)
    scratch = [c for c in children if c.info.run_name == "features/probe/scratch"][0]
    assert len(client.get_metric_history(scratch.info.run_id, "test/accuracy")) == 2

    # A rerun into the same output as if the first had stopped before its baselines
    # finished (their kept record removed), the encoder renamed, no fine-tuning: the
    # baselines run, every other run is the kept one (its numbers, this run's names).
    kept = json.loads((out / "_runs.json").read_text())
    baseline = [k for k, rows in kept.items() if rows[0]["method"] == "baseline"]
    assert len(baseline) == 1  # both tasks have the same rows: one key
    (out / "_runs.json").write_text(json.dumps({k: kept[k] for k in kept if k not in baseline}))
    again = ["--encoder", f"renamed={encoder}", "--encoder", "scratch", "--suite", str(suite)]
    again += ["--output", str(out), "num_seeds=2", "probe_layers=all", "methods=[baseline,probe]"]
    again += [f"mlflow.tracking_uri={mlflow_server}"]
    assert benchmark.main(again) == 0
    rerun = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["task"], r["method"]) for r in rerun if not r["reused"]} == {
        ("features", "baseline"),
        ("audio", "baseline"),
    }
    for r in rerun:  # tasks on the same rows share their kept runs, times included
        was = key[(r["task"], r["method"], r["encoder"].replace("renamed", "pre"), r["seed"])]
        if r["reused"]:
            assert r == was | {"reused": True, "encoder": r["encoder"], "seconds": r["seconds"]}
        else:
            assert r["test/accuracy"] == was["test/accuracy"]  # deterministic
    assert "6 of 8 runs reused" in (out / "results.md").read_text()
    assert set(json.loads((out / "_runs.json").read_text())) == set(kept)
