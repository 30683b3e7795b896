"""Driver side of a fine-tuning sweep: Ray Tune (ASHA) over trials that each run the
fine-tuning job on Ray Train, an MLflow parent run with one child per trial, the best
trial's classifier registered, and restore after the driver dies."""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from jobs.finetuning.config import FinetuneConfig
from jobs.finetuning.driver import (
    PreparedData,
    final_classifier,
    model_payload,
    prepare_data,
    run_finetuning,
)
from jobs.kit.config import build, flatten, to_dict
from jobs.kit.tracking import default_tracking_uri, register_classifier, start_run, ui_command
from jobs.tuning.config import TuneJobConfig, corners, sample_space
from pipeline.storage import OutputLock, absolute

logger = logging.getLogger("tune")


@dataclass(frozen=True)
class TuneResult:
    output: str
    table: pd.DataFrame
    best_trial: str
    best_metrics: dict[str, Any]
    best_config: dict[str, Any]
    model_path: str
    mlflow_uri: str
    mlflow_run_id: str
    model_version: str


def finetune_config(base: dict[str, Any], overrides: dict[str, Any]) -> FinetuneConfig:
    """The fine-tuning config of a trial: ``base`` with dotted ``overrides`` applied."""
    values = {k: v for k, v in base.items() if k != "tune"}
    for key, value in overrides.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return build(FinetuneConfig, values, where="tune.search_space")


def trial_main(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    data: str,
    output: str,
    prepared: dict[int, PreparedData],
    parent_run_id: str,
) -> None:
    """One trial: the fine-tuning job with the trial's values on the sweep's prepared
    splits, reporting every epoch to Tune through Ray Train (TuneReportCallback)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = finetune_config(base, config)
    cfg = replace(
        cfg,
        name=f"trial_{trial_id}",
        scaling=replace(cfg.scaling, max_failures=0),  # Tune retries the trial
        mlflow=replace(cfg.mlflow, registered_model=None),
    )  # the sweep registers
    run_finetuning(
        data,
        f"{output}/trials/{trial_id}",
        cfg,
        prepared=prepared[cfg.model.input_tdim],
        parent_run_id=parent_run_id,
        score_final=False,
        callbacks=[TuneReportCallback()],
        lock=False,  # the sweep holds OUTPUT's lock
    )


TRIAL_CPUS_PER_WORKER = 1.0
"""A trial's workers' CPUs when scaling.cpus_per_worker is unset: trials share the cluster."""


def trial_lengths(cfg: TuneJobConfig) -> list[int]:
    """The input lengths trials can use (the data is prepared once per length)."""
    spec = cfg.tune.search_space.get("model.input_tdim")
    return sorted(set(spec["choice"])) if spec else [cfg.model.input_tdim]


def concurrent_trials(cfg: TuneJobConfig, total: dict[str, float]) -> int:
    """tune.max_concurrent_trials, or as many trials as the cluster's resources ``total``
    (``ray.cluster_resources()``: CPUs, GPUs) hold, counting each trial's driver and its
    Ray Train workers."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    s = cfg.scaling
    cpus = TRIAL_CPUS_PER_WORKER if s.cpus_per_worker is None else s.cpus_per_worker
    per_trial = cfg.tune.trial_driver_cpus + s.num_workers * cpus
    fits = math.floor(total.get("CPU", 0) / per_trial + 1e-9)
    if s.use_gpu:
        fits = min(fits, math.floor(total.get("GPU", 0) / s.num_workers + 1e-9))
    if fits < 1:
        raise ValueError(
            f"a trial needs {per_trial:g} CPUs{' and GPUs' if s.use_gpu else ''} "
            f"(tune.trial_driver_cpus + scaling.num_workers x "
            f"scaling.cpus_per_worker); the cluster has {total}"
        )
    return fits


def run_tuning(data: str, output: str, cfg: TuneJobConfig) -> TuneResult:
    """Run (or restore) the sweep ``output/cfg.name``; register the best classifier.

    Raises:
        OutputBusyError: another job is writing ``output`` (refused before any work).
    """
    output = absolute(output)
    with OutputLock(output):
        return _tune(data, output, cfg)


def _tune(data: str, output: str, cfg: TuneJobConfig) -> TuneResult:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if cfg.scaling.cpus_per_worker is None:  # trials share the cluster
        cfg = replace(cfg, scaling=replace(cfg.scaling, cpus_per_worker=TRIAL_CPUS_PER_WORKER))
    for corner in corners(cfg.tune.search_space):
        finetune_config(to_dict(cfg), corner)  # every key and extreme value validates
    prepared = {
        n: prepare_data(data, replace(cfg, model=replace(cfg.model, input_tdim=n)))
        for n in trial_lengths(cfg)
    }  # also validates data and labels
    first = next(iter(prepared.values()))
    metric = f"valid/{first.task.metric}"
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    parent = start_run(
        uri,
        cfg.mlflow.experiment,
        cfg.name,
        f"{output}/{cfg.name}",
        flatten(to_dict(cfg)) | {"data": data, "output": output},
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_main,
            base=to_dict(cfg),
            data=data,
            output=output,
            prepared=prepared,
            parent_run_id=parent,
        ),
        {"CPU": cfg.tune.trial_driver_cpus},
    )
    path = f"{output}/{cfg.name}"
    if tune.Tuner.can_restore(path):
        logger.info("restoring the sweep at %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        t = cfg.tune
        tuner = tune.Tuner(
            trainable,
            param_space=sample_space(t.search_space),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                num_samples=t.num_samples,
                max_concurrent_trials=concurrent_trials(cfg, ray.cluster_resources()),
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=cfg.train.max_epochs,
                    grace_period=t.grace_period,
                    reduction_factor=t.reduction_factor,
                ),
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=output,
                failure_config=tune.FailureConfig(max_failures=t.max_failures),
            ),
        )
    results = tuner.fit()
    return _finish(results, metric, prepared, cfg, output, uri, parent)


def _finish(
    results,
    metric: str,
    prepared: dict[int, PreparedData],
    cfg: TuneJobConfig,
    output: str,
    uri: str,
    parent: str,
) -> TuneResult:
    """Best trial -> OUTPUT/best/model.pt, registry; the table; MLflow bookkeeping."""
    import fsspec
    import mlflow
    from ray.train import Checkpoint

    errors = [r.error for r in results if r.error is not None]
    ok = [r for r in results if r.metrics and metric in r.metrics]
    if not ok:
        raise RuntimeError(
            f"no trial reported {metric}; first error: {errors[0] if errors else 'none'}"
        )
    # A trial's classifier is its best epoch (or its average), so rank trials by the best
    # epoch's metric; every epoch's report carries that as best/<metric>.
    best = max(ok, key=lambda r: _value(r.metrics.get(f"best/{metric}", r.metrics[metric])))
    best_cfg = finetune_config(to_dict(cfg), best.config)
    model, _ = final_classifier(Checkpoint(best.metrics["checkpoint_path"]))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.pt"
        torch.save(
            model_payload(model, prepared[best_cfg.model.input_tdim], tune_config=best.config),
            local,
        )
        fs, root = fsspec.core.url_to_fs(f"{output}/best")
        fs.makedirs(root, exist_ok=True)
        fs.put_file(str(local), f"{root}/model.pt")
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        client.log_batch(
            parent,
            metrics=[mlflow.entities.Metric(f"best/{metric}", _value(best.metrics[metric]), 0, 0)],
            params=[mlflow.entities.Param(f"best.{k}", str(v)) for k, v in best.config.items()],
        )
        version = register_classifier(uri, parent, local, cfg.tune.registered_model)
    table = trial_table(results, metric, list(cfg.tune.search_space))
    _close_children(uri, parent)
    return TuneResult(
        output,
        table,
        best.metrics.get("trial_id", best.path),
        best.metrics,
        best.config,
        f"{output}/best/model.pt",
        uri,
        parent,
        version,
    )


def _value(v: Any) -> float:
    v = float(v)
    return v if math.isfinite(v) else -math.inf


def trial_table(results, metric: str, keys: list[str]) -> pd.DataFrame:
    """One row per trial: id, searched values, epochs run, last and best metric (the best
    epoch of the trial's training run, the one its classifier comes from; after a restore
    the history may also hold reports of epochs that were redone)."""
    rows = []
    for r in results:
        m = r.metrics or {}
        best = m.get(f"best/{metric}", float("nan"))  # the trial's model: its best epoch
        rows.append(
            {
                "trial": m.get("trial_id", Path(r.path).name[:16]),
                **{k: r.config.get(k) for k in keys},
                "epochs": m.get("training_iteration", 0),
                metric: m.get(metric),
                f"best {metric}": best,
                "status": "ERROR" if r.error else "OK",
            }
        )
    return pd.DataFrame(rows).sort_values(f"best {metric}", ascending=False)


def _close_children(uri: str, parent: str) -> None:
    """Mark trial runs that ASHA stopped (still RUNNING) as KILLED; end the parent run."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'"):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
    client.set_terminated(parent, status="FINISHED")


def describe(result: TuneResult) -> str:
    with pd.option_context(
        "display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format
    ):
        table = result.table.to_string(index=False)
    return "\n".join(
        [
            table,
            "",
            f"best trial   {result.best_trial}: {result.best_config}",
            f"best model   {result.model_path} (registered as version {result.model_version})",
            f"mlflow       parent run {result.mlflow_run_id} at {result.mlflow_uri}",
            f"open the UI  {ui_command(result.mlflow_uri)}",
        ]
    )
