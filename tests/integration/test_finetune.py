"""Fine-tuning, evaluation, prediction and a Tune sweep on a real local Ray with a real
MLflow server, on a generated labelled corpus (7 classes, 140 clips, 6 broken files)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import torch

from jobs import evaluate, finetune, predict
from jobs.kit.config import load_config
from jobs.tuning.config import TuneJobConfig
from jobs.tuning.driver import run_tuning
from pipeline.synth import CLASSES, write_corpus
from ssast import SSAST, SSASTClassifier, SSASTConfig, load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "jobs" / "configs" / "finetune_sample.yaml")
FAST = ["model.input_tdim=128"]


@pytest.fixture(scope="module")
def labelled(ray_session, tmp_path_factory):
    """(manifest, featurized dataset dir, number of good clips, number of broken files)."""
    from pipeline.featurize import FeaturizeConfig, featurize

    root = tmp_path_factory.mktemp("labelled")
    manifest = write_corpus(
        root / "corpus", num_clips=140, duration_s=(1.0, 2.0), seed=5, rates_hz=(16000, 22050)
    )
    result = featurize(
        str(manifest), str(root / "ds"), FeaturizeConfig(clips_per_shard=35, max_error_fraction=0.1)
    )
    rows = pq.read_table(root / "ds" / "features", columns=["path"]).num_rows
    errors = pq.read_table(root / "ds" / "errors", columns=["path"]).num_rows
    assert rows == 140 and errors >= 1, result
    return manifest, str(root / "ds"), rows, errors


@pytest.fixture(scope="module")
def scratch_run(labelled, mlflow_server, tmp_path_factory):
    """jobs/finetune.py from random init: (output dir, metrics.json)."""
    _, data, _, _ = labelled
    out = tmp_path_factory.mktemp("scratch") / "run"
    assert (
        finetune.main(
            [
                "--config",
                SAMPLE,
                "--data",
                data,
                "--output",
                str(out),
                "--init",
                "scratch",
                *FAST,
                "train.max_epochs=12",
                "name=scratch",
                f"mlflow.tracking_uri={mlflow_server}",
                "mlflow.registered_model=ssast-sample-classifier",
            ]
        )
        == 0
    )
    return out, json.loads((out / "metrics.json").read_text())


def test_finetune_from_scratch_is_well_above_chance_and_tracked(scratch_run, mlflow_server):
    out, metrics = scratch_run
    chance = 1 / len(CLASSES)
    assert metrics["test/accuracy"] >= 0.4 > 2.5 * chance, metrics
    assert metrics["epochs"] == 12 and 1 <= metrics["best_epoch"] <= 12
    assert 0 <= metrics["test/mAP"] <= 1 and metrics["test/AUC"] > 0.6
    for name in ("model.pt", "config.yaml", "test_report.txt", "test_confusion.png"):
        assert (out / name).stat().st_size > 0, name
    clf = load_checkpoint(str(out / "model.pt"))
    assert isinstance(clf, SSASTClassifier) and clf.cfg.input_tdim == 128
    task = torch.load(out / "model.pt", weights_only=True)["task"]
    assert task["class_names"] == sorted(CLASSES)

    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ssast-finetune")
    [run] = client.search_runs([exp.experiment_id], "attributes.run_name = 'scratch'")
    assert run.info.status == "FINISHED"
    assert run.data.params["init"] == "scratch" and run.data.params["train.max_epochs"] == "12"
    history = client.get_metric_history(run.info.run_id, "valid/accuracy")
    assert [m.step for m in history] == list(range(1, 13))
    assert run.data.metrics["final/test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    outputs = {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
    assert "test_confusion.png" in artifacts and "outputs/model.pt" in outputs
    [version] = client.search_model_versions("name = 'ssast-sample-classifier'")
    assert version.run_id == run.info.run_id


def test_evaluate_reproduces_the_test_metrics(scratch_run, labelled, tmp_path, capsys):
    out, metrics = scratch_run
    _, data, _, _ = labelled
    assert (
        evaluate.main(
            [
                "--model",
                str(out / "model.pt"),
                "--data",
                data,
                "--split",
                "test",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert again["test/mAP"] == pytest.approx(metrics["test/mAP"], abs=1e-6)
    assert "tone" in capsys.readouterr().out  # the per-class report


def test_released_checkpoint_is_a_starting_point_same_command(labelled, mlflow_server, tmp_path):
    """A file in the released SSAST layout (DataParallel keys, 1024 frames) starts a
    linear probe on 2 workers: the encoder stays exactly the checkpoint's, positions
    cropped to 128 frames."""
    _, data, _, _ = labelled
    torch.manual_seed(3)
    pretrained = SSAST(SSASTConfig(size="tiny", input_tdim=1024))
    released = tmp_path / "SSAST-Tiny-Patch-400.pth"
    torch.save(pretrained.to_original_state_dict(), released)
    assert all(k.startswith("module.") for k in torch.load(released, weights_only=True))
    out = tmp_path / "probe"
    assert (
        finetune.main(
            [
                "--config",
                SAMPLE,
                "--data",
                data,
                "--output",
                str(out),
                "--init",
                str(released),
                *FAST,
                "train.max_epochs=2",
                "train.linear_probe=true",
                "optim.lr=1e-2",
                "name=probe",
                "scaling.num_workers=2",
                f"mlflow.tracking_uri={mlflow_server}",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test/accuracy"] <= 1
    clf = load_checkpoint(str(out / "model.pt"))
    expected = pretrained.adapted(patch_stride=(16, 16), input_fdim=128, input_tdim=128)
    got = clf.encoder.state_dict()
    want = expected.encoder.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=key)
    assert clf.encoder.pos_embed.shape[1] == 2 + 8 * 8  # cls + dist, 8 x 8 patches


def test_predict_one_row_per_clip_errors_table_and_embeddings(scratch_run, labelled, tmp_path):
    out, _ = scratch_run
    manifest, data, good, broken = labelled
    model = str(out / "model.pt")
    assert (
        predict.main(
            ["--model", model, "--input", str(manifest), "--output", str(tmp_path / "m"), "top_k=3"]
        )
        == 0
    )
    preds = pq.read_table(tmp_path / "m" / "predictions").to_pylist()
    errors = pq.read_table(tmp_path / "m" / "errors").to_pylist()
    assert len(preds) == good and len(errors) == broken
    with open(manifest) as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert sorted(r["path"] for r in preds + errors) == sorted(paths)
    assert all(e["reason"] for e in errors)
    for r in preds:
        assert len(r["top_labels"]) == 3 and set(r["top_labels"]) <= set(CLASSES)
        assert r["top_scores"] == sorted(r["top_scores"], reverse=True)

    # The featurized dataset gives the same predictions as decoding the manifest.
    assert (
        predict.main(
            ["--model", model, "--input", data, "--output", str(tmp_path / "f"), "top_k=3"]
        )
        == 0
    )
    from_features = {
        r["path"]: r for r in pq.read_table(tmp_path / "f" / "predictions").to_pylist()
    }
    assert len(from_features) == good
    for r in preds:
        f = from_features[r["path"]]
        assert f["top_labels"][0] == r["top_labels"][0]
        assert f["top_scores"][0] == pytest.approx(r["top_scores"][0], abs=1e-3)

    assert (
        predict.main(
            ["--model", model, "--input", data, "--output", str(tmp_path / "e"), "mode=embeddings"]
        )
        == 0
    )
    emb = pq.read_table(tmp_path / "e" / "predictions")
    assert emb.num_rows == good
    assert {len(v) for v in emb.column("embedding").to_pylist()} == {192}  # tiny width


def test_tune_sweep_restores_after_the_driver_dies_and_registers_the_best(
    labelled, mlflow_server, ray_session, tmp_path
):
    """3 trials, ASHA, 2 at a time on 2 CPUs' worth of resources: the third starts only
    once an earlier trial ended (finished or stopped by ASHA) and freed its resources. The
    first driver is killed after the first trial reported; the same command restores the
    sweep."""
    _, data, _, _ = labelled
    out = tmp_path / "sweep"
    args = [
        "--config",
        SAMPLE,
        "--data",
        data,
        "--output",
        str(out),
        "--num-samples",
        "3",
        *FAST,
        "train.max_epochs=3",
        "scaling.cpus_per_worker=0.5",
        "tune.max_concurrent_trials=2",
        "name=sweep",
        f"mlflow.tracking_uri={mlflow_server}",
    ]
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
    }
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "tune.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not any(p.stat().st_size for p in out.glob("sweep/*/result.json")):
            assert driver.poll() is None, f"the sweep driver exited ({driver.returncode})"
            assert time.time() < deadline, "no trial reported within 300 s"
            time.sleep(1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    first = {"_".join(p.name.split("_")[2:4]) for p in out.glob("sweep/trial_main_*")}
    assert first

    cfg = load_config(TuneJobConfig, SAMPLE, args[args.index(FAST[0]) :] + ["tune.num_samples=3"])
    result = run_tuning(data, str(out), cfg)
    table = result.table
    assert len(table) == 3 and set(table["status"]) == {"OK"}
    assert first <= set(table["trial"])  # the same trials, resumed
    assert table["epochs"].between(1, 3).all()
    metric = "best valid/accuracy"
    assert result.best_metrics["best/valid/accuracy"] == pytest.approx(table[metric].max())
    assert isinstance(load_checkpoint(str(out / "best" / "model.pt")), SSASTClassifier)

    client = mlflow.MlflowClient(mlflow_server)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'"
    )
    assert len(children) == 3
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    [version] = client.search_model_versions("name = 'ssast-tuned'")
    assert version.run_id == result.mlflow_run_id


@pytest.fixture(scope="module")
def mel64(labelled, tmp_path_factory):
    """The labelled corpus featurized with non-default settings (64 mel bins)."""
    from pipeline.features import FeatureConfig
    from pipeline.featurize import FeaturizeConfig, featurize

    out = tmp_path_factory.mktemp("mel64") / "ds"
    cfg = FeaturizeConfig(
        clips_per_shard=35, max_error_fraction=0.1, features=FeatureConfig(num_mel_bins=64)
    )
    featurize(str(labelled[0]), str(out), cfg)
    return str(out)


def test_a_model_carries_its_features_and_stops_on_a_non_finite_loss(
    labelled, mel64, mlflow_server, tmp_path, capsys
):
    """Trained on 64-mel features, the model featurizes raw audio with 64 mel bins (the
    same predictions as from its dataset) and refuses a default-settings dataset. Then a
    NaN loss stops fine-tuning as it stops pretraining: exit 3, step and lr in the error,
    the last good checkpoint kept, no retry."""
    manifest, default_data, good, _ = labelled
    out = tmp_path / "run"
    common = [
        "--config",
        SAMPLE,
        "--data",
        mel64,
        "--output",
        str(out),
        "--init",
        "scratch",
        *FAST,
        "name=mel64",
        f"mlflow.tracking_uri={mlflow_server}",
    ]
    assert finetune.main([*common, "train.max_epochs=1"]) == 0
    model = str(out / "model.pt")
    assert torch.load(model, weights_only=True)["features"]["num_mel_bins"] == 64

    assert (
        predict.main(
            [
                "--model",
                model,
                "--input",
                str(manifest),
                "--output",
                str(tmp_path / "audio"),
                "top_k=2",
            ]
        )
        == 0
    )
    assert (
        predict.main(
            ["--model", str(out), "--input", mel64, "--output", str(tmp_path / "feats"), "top_k=2"]
        )
        == 0
    )  # a directory reference
    from_audio = {
        r["path"]: r for r in pq.read_table(tmp_path / "audio" / "predictions").to_pylist()
    }
    from_feats = pq.read_table(tmp_path / "feats" / "predictions").to_pylist()
    assert len(from_audio) == len(from_feats) == good
    for r in from_feats:
        assert from_audio[r["path"]]["top_labels"] == r["top_labels"]
        assert from_audio[r["path"]]["top_scores"] == pytest.approx(r["top_scores"], abs=1e-3)
    capsys.readouterr()
    refused = ["--model", model, "--input", default_data, "--output", str(tmp_path / "refused")]
    assert predict.main(refused) == 2  # one line naming the field, no traceback
    assert "num_mel_bins: data 128 vs model 64" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"num_mel_bins: data 128 vs model 64"):
        predict.main([*refused, "--debug"])

    capsys.readouterr()
    blown = ["optim.lr=1e30", "optim.schedule=constant", "train.max_epochs=3"]
    assert finetune.main([*common, *blown]) == 3
    assert re.search(
        r"loss became NaN/inf at step \d+ \(lr [\d.]+e\+\d+\); last good checkpoint: "
        r"\S*epoch_0001",
        capsys.readouterr().err,
    )
    assert [p.name for p in (out / "mel64").glob("epoch_*")] == ["epoch_0001"]


def test_predict_takes_a_model_registry_uri(
    scratch_run, labelled, mlflow_server, tmp_path, monkeypatch
):
    """models:/NAME/VERSION (what fine-tuning registered) predicts like the file it holds:
    its top-1 labels on the test split give the test accuracy fine-tuning reported."""
    _, metrics = scratch_run
    _, data, _, _ = labelled
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert (
        predict.main(
            [
                "--model",
                "models:/ssast-sample-classifier/1",
                "--input",
                data,
                "--output",
                str(tmp_path),
                "top_k=1",
                "windows=false",  # the first input_tdim frames, as fine-tuning scored them
            ]
        )
        == 0
    )
    top = {
        r["path"]: r["top_labels"][0] for r in pq.read_table(tmp_path / "predictions").to_pylist()
    }
    rows = pq.read_table(Path(data) / "features", columns=["path", "label", "split"])
    test = [r for r in rows.to_pylist() if r["split"] == "test"]
    accuracy = sum(top[r["path"]] == r["label"] for r in test) / len(test)
    assert accuracy == pytest.approx(metrics["test/accuracy"])
