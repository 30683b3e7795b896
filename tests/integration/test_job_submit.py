"""`ray job submit` against a Ray head started here, through infra/submit.sh with the
runtime_env from infra/: the featurize and the pretrain job on the sample corpus.

The head runs with token authentication (as the KubeRay manifests configure it) and its
own token file; it is a separate cluster from the session's in-process Ray.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_head():
    """(environment for CLI calls, dashboard URL) of a `ray start --head --block` cluster."""
    # Short path: Ray's unix sockets live under the temp dir (108-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            f"--temp-dir={tmp / 'ray'}",
            "--disable-usage-stats",
            # The test session's own Ray (ray_session) already holds the default agent
            # ports (52365, ...); a head whose job agent cannot bind never accepts a job.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ],
        env={k: v for k, v in env.items() if k != "RAY_ADDRESS"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = env["RAY_ADDRESS"]
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
            break
        except urllib.error.HTTPError:  # up, and asking for the token
            break
        except OSError:
            if time.time() > deadline or head.poll() is not None:
                head.kill()
                raise RuntimeError("ray start --head did not serve its dashboard") from None
            time.sleep(0.5)
    yield env, url
    # The head's processes (GCS, raylet, workers) share the command's process group; a
    # graceful stop takes ~30 s, and nothing of this throw-away cluster needs saving.
    head.terminate()
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
        head.wait(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)


def submit(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "infra" / "submit.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def list_jobs(env: dict, url: str) -> list[list[str]]:
    """[submission id, status, entrypoint] of every job, asked with the head's token (the
    auth mode is fixed when ray is imported, so not from this process)."""
    code = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "print(json.dumps([[j.submission_id, j.status.value, j.entrypoint] "
        "for j in JobSubmissionClient(sys.argv[1]).list_jobs() if j.submission_id]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_featurize_and_pretrain_jobs_run_under_ray_job_submit(
    ray_head, sample_corpus, mlflow_server, tmp_path
):
    env, url = ray_head
    manifest, good = sample_corpus
    data = tmp_path / "features"
    done = submit(
        env,
        "jobs/featurize.py",
        "--input",
        str(manifest),
        "--output",
        str(data),
        "clips_per_shard=8",
        "max_error_fraction=0.5",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((data / "dataset.json").read_text())
    assert info["num_rows"] == good and info["num_errors"] > 0, info
    assert list((data / "errors").glob("*.parquet"))

    storage = tmp_path / "pretrain"
    done = submit(
        env,
        "jobs/pretrain.py",
        "--data",
        str(data),
        "--output",
        str(storage),
        "--config",
        "jobs/configs/pretrain_demo.yaml",
        "train.max_steps=4",
        "train.log_every=2",
        "train.checkpoint_every=2",
        "train.image_every=0",
        "model.input_tdim=256",
        "model.num_masked=100",
        "name=submitted",
        f"mlflow.tracking_uri={mlflow_server}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (storage / "final" / "ssast_original.pth").stat().st_size > 1e6

    # The cluster ran both, under the submission ids submit.sh gave them.
    jobs = {
        job_id.split("-")[0]: (status, entrypoint)
        for job_id, status, entrypoint in list_jobs(env, url)
    }
    assert set(jobs) == {"featurize", "pretrain"}
    assert {status for status, _ in jobs.values()} == {"SUCCEEDED"}
    assert jobs["pretrain"][1].startswith("python jobs/pretrain.py")

    runs = mlflow.MlflowClient(mlflow_server).search_runs(
        [mlflow.MlflowClient(mlflow_server).get_experiment_by_name("ssast-pretrain").experiment_id],
        filter_string="attributes.run_name = 'submitted'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["train/loss"] > 0


def test_the_head_refuses_clients_without_its_token(ray_head):
    env, url = ray_head
    anonymous = {**env, "RAY_AUTH_MODE": "disabled"}
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "list", "--address", url],
        env=anonymous,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode != 0
    assert "token" in (listed.stdout + listed.stderr).lower()
