"""Real services for integration tests: a local S3-API server (moto) and one local Ray.

Both are session-scoped: Ray takes ~6 s to start. The S3 fixture sets the AWS variables
before Ray starts so that Ray's worker processes inherit them.
"""

import os
import socket

import pytest

from pipeline.synth import write_corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_SECRET = "s3cret-7f1d9a-never-logged"
"""The S3 secret key of the test server: no log, MLflow param, tag or artifact holds it."""


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto in server mode on 127.0.0.1; s3fs, boto3 and pyarrow reach it by AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the session. 4 logical CPUs on 2 cores: Ray Data's read and map
    stages must not starve each other (shared/reference/ray-notes.md, 2-core deadlock)."""
    import ray

    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "4")
    ray.init(
        num_cpus=4,
        include_dashboard=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "4"}},
    )
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = 120
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    """(manifest, number of good clips) of a small generated corpus with broken files."""
    root = tmp_path_factory.mktemp("sample")
    return write_corpus(root, num_clips=28, duration_s=(1.0, 3.0), seed=11), 28


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, proxied artifacts)."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("mlflow server did not become healthy within 90 s")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def featurized(ray_session, sample_corpus, tmp_path_factory):
    """The sample corpus featurized once: (dataset dir, number of rows)."""
    from pipeline.featurize import FeaturizeConfig, featurize

    manifest, good = sample_corpus
    out = tmp_path_factory.mktemp("featurized") / "ds"
    featurize(str(manifest), str(out), FeaturizeConfig(clips_per_shard=8))
    return str(out), good
