"""A registered classifier served by `mlflow models serve` answers audio: WAVs posted as
base64 (or named by path) get the labels jobs/predict.py gives them, a broken file gets
its own error row, and the server stays up."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from jobs.inference.config import PredictConfig
from jobs.inference.driver import run_prediction
from jobs.kit.models import contract
from jobs.kit.tracking import register_classifier, start_run
from pipeline.features import FeatureConfig
from pipeline.labels import LabelSet
from pipeline.normalization import Normalization
from ssast import SSASTClassifier, SSASTConfig, save_checkpoint

from .conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CLASSES = ("bird", "car", "drum", "wind")


def post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())["predictions"]


def test_mlflow_models_serve_answers_audio_like_predict(ray_session, tmp_path):
    torch.manual_seed(0)
    clf = SSASTClassifier(SSASTConfig(size="tiny", input_tdim=128, num_masked=1), 4).eval()
    with torch.no_grad():
        clf.head[1].bias.copy_(torch.tensor([0.0, 0.3, -0.2, 0.1]))
    ckpt = tmp_path / "model.pt"
    extra = contract(FeatureConfig(), Normalization(-5.0, 3.0)) | {
        "task": LabelSet(CLASSES).to_dict()
    }
    save_checkpoint(clf, ckpt, extra=extra)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = start_run(uri, "serve-test", "clf", str(tmp_path), {})
    version = register_classifier(uri, run_id, ckpt, "ssast-serve-test")

    rng = np.random.default_rng(0)
    t = np.arange(48000) / 16000
    files = {
        "tone.wav": (0.3 * np.sin(2 * np.pi * 440 * t[:24000]), 16000),  # 1.5 s
        "noise.wav": (0.2 * rng.standard_normal(66150), 22050),  # 3 s: windows
    }
    for name, (x, rate) in files.items():
        sf.write(tmp_path / name, x.astype(np.float32), rate)
    (tmp_path / "broken.wav").write_bytes(b"RIFF" + rng.bytes(300))
    names = ["tone.wav", "broken.wav", "noise.wav"]

    port = free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/ssast-serve-test/{version}",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        # mlflow starts `uvicorn` by name: the venv's bin must be on PATH.
        env=os.environ
        | {"MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(1)
        encoded = [base64.b64encode((tmp_path / n).read_bytes()).decode() for n in names]
        answer = post(
            f"{url}/invocations",
            {"dataframe_split": {"columns": ["audio"], "data": [[e] for e in encoded]}},
        )
        by_path = post(  # the server is still up, and reads paths too
            f"{url}/invocations",
            {"dataframe_split": {"columns": ["path"], "data": [[str(tmp_path / "tone.wav")]]}},
        )
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()

    assert [a["path"] for a in answer] == ["request[0]", "request[1]", "request[2]"]
    assert answer[1]["reason"] == "unreadable" and answer[1]["top_labels"] is None
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(str(tmp_path / n) for n in names) + "\n")
    run_prediction(str(ckpt), str(manifest), str(tmp_path / "pred"), PredictConfig())
    table = pq.read_table(tmp_path / "pred" / "predictions").to_pylist()
    want = {Path(r["path"]).name: r for r in table}
    assert set(want) == {"tone.wav", "noise.wav"}
    for got, name in ((answer[0], "tone.wav"), (answer[2], "noise.wav"), (by_path[0], "tone.wav")):
        assert got["top_labels"] == want[name]["top_labels"], name
        np.testing.assert_allclose(got["top_scores"], want[name]["top_scores"], atol=1e-5)
    assert answer[0]["reason"] is None
