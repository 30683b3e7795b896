"""MLflow for every job: where runs go, resumable runs, rank 0's metric logging, the
model registry.

Metric keys are ``split/name``: ``train/...`` (training loss, lr), ``valid/...``
(validation metrics), ``perf/...`` (throughput), plus ``final/...`` and ``best/...``
summaries. The step axis is the optimizer step (pretraining) or the epoch (fine-tuning).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from jobs.kit.cli import ROOT

logger = logging.getLogger(__name__)

RUN_KEY_TAG = "ssast.run_key"
"""Tag identifying a job run across restarts: <storage>/<name>."""


def default_tracking_uri() -> str:
    """A local SQLite store under <project>/mlruns (artifacts beside it), unless
    MLFLOW_TRACKING_URI is set."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    (ROOT / "mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return (
        f".venv/bin/mlflow ui --backend-store-uri {uri} "
        f"--default-artifact-root {ROOT / 'mlruns' / 'artifacts'} "
        "--host 127.0.0.1 --port 5000 --workers 1"
    )


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    run_key: str,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> str:
    """Create the job's MLflow run, or reuse the unfinished one of the same run key.

    Returns:
        The run id (the workers log into it).
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if not uri.startswith(("http://", "https://", "databricks")):
            location = (ROOT / "mlruns" / "artifacts").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found and found[0].info.status != "FINISHED":
        logger.info("continuing MLflow run %s (%s)", found[0].info.run_id, run_key)
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_KEY_TAG: run_key, **(tags or {})})
    for chunk in _chunks(list(params.items()), 100):
        client.log_batch(
            run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in chunk]
        )
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient(uri).set_terminated(run_id, status=status)


class Tracker:
    """Rank 0's MLflow logging into the run the driver created: every finite number whose
    key follows the ``split/name`` convention, at the given step."""

    def __init__(self, uri: str, run_id: str) -> None:
        import mlflow

        self.entities, self.run_id = mlflow.entities, run_id
        self.client = mlflow.MlflowClient(uri)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                self.entities.Metric(k, float(v), now, step)
                for k, v in metrics.items()
                if "/" in k and isinstance(v, int | float) and math.isfinite(v)
            ],
        )

    def figure(self, fig, path: str) -> None:
        self.client.log_figure(self.run_id, fig, path)


def register_encoder(uri: str, run_id: str, checkpoint: Path, name: str) -> str:
    """Log the encoder as an MLflow pyfunc (``predict`` = clip embeddings) and register it.

    Returns:
        The registered model version.
    """
    return _register(uri, run_id, checkpoint, name, "encoder", "mlflow_encoder.py")


def register_classifier(uri: str, run_id: str, checkpoint: Path, name: str) -> str:
    """Log a fine-tuned classifier as an MLflow pyfunc (``predict`` = logits), register it.

    Returns:
        The registered model version.
    """
    return _register(uri, run_id, checkpoint, name, "classifier", "mlflow_classifier.py")


def _register(uri: str, run_id: str, checkpoint: Path, name: str, artifact: str, code: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=artifact,
            python_model=str(ROOT / "jobs" / "inference" / code),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(ROOT / d) for d in ("ssast", "pipeline", "jobs")],
            pip_requirements=_requirements(),
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}"
        for p in ("torch", "numpy", "pyarrow", "pandas", "fsspec", "soundfile", "soxr")
    ]


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]
