"""Driver of the evaluation suite: featurize each task once, run every task x method x
encoder x seed as a Ray task, aggregate mean and spread over seeds, write the table and
log an MLflow parent run with one child per task x method x encoder.

A suite is a YAML file: ``tasks: {NAME: {manifest: PATH} or {data: FEATURIZED_DIR}}``,
paths relative to the file. Every task has ``label`` and ``split`` columns whose splits
are ``train``, ``valid`` (model selection: the probe's L2 strength) and ``test`` (held-out
conditions; scored once).

Every finished run is kept in ``OUTPUT/_runs.json`` under a key of its inputs (the
task's rows, the encoder's weights, method, seed, length, normalisation, recipe), written
as runs finish: a rerun into the same output takes what it finds there (``reuse``), so a
benchmark that stopped resumes and one given another encoder runs only that encoder's
runs. Runs are deterministic given their inputs (a run repeated gives the same score),
which is what makes a kept result as good as a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from jobs.evaluation.config import BenchmarkConfig
from jobs.evaluation.probes import LabelledSet
from jobs.evaluation.run import run_one
from jobs.kit.config import flatten, to_dict
from jobs.kit.models import encoder_of, read_model
from jobs.kit.tracking import default_tracking_uri, end_run, start_run, ui_command
from pipeline.batches import auto_target_frames
from pipeline.features import FeatureConfig
from pipeline.normalization import Normalization
from pipeline.schema import feature_diff, load_dataset_info
from pipeline.storage import OutputLock, absolute, exists, read_json, write_json

logger = logging.getLogger("benchmark")

RUNS_FILE = "_runs.json"
"""``OUTPUT/_runs.json``: {run key: the run's rows} of every finished run."""
KEY_VERSION = 1
"""Part of every run key: raise it when what a run computes changes, so that runs kept
by older code are not reused."""


@dataclass(frozen=True)
class Encoder:
    """One encoder under test: a model reference, or 'scratch' (random weights)."""

    name: str
    """Its column in the table: the reference, or the group's name (``NAME=REF``)."""
    ref: str
    payload: dict | None
    """Our checkpoint format; None for scratch."""
    features: FeatureConfig
    normalization: Normalization | None


@dataclass(frozen=True)
class BenchmarkResult:
    output: str
    rows: list[dict[str, Any]]
    """One per run: task, method, encoder, member, seed, valid/accuracy, test/accuracy,
    l2, seconds (the run's wall time in its Ray task)."""
    table: str
    mlflow_uri: str
    mlflow_run_id: str


def read_suite(path: str) -> dict[str, dict[str, str]]:
    """Task name -> {"manifest": absolute path} or {"data": absolute path}."""
    root = Path(path).resolve().parent
    doc = yaml.safe_load(Path(path).read_text()) or {}
    tasks = doc.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{path}: expected a mapping `tasks: {{NAME: {{manifest: PATH}}}}`")
    out = {}
    for name, spec in tasks.items():
        keys = [k for k in ("manifest", "data") if isinstance(spec, dict) and k in spec]
        if len(keys) != 1:
            raise ValueError(f"{path}: task {name!r} needs exactly one of manifest: or data:")
        value = spec[keys[0]]
        out[name] = {keys[0]: value if "://" in value else str(root / value)}
    return out


GROUP = re.compile(r"([A-Za-z_][\w.-]*)=(.+)")


def parse_encoder(arg: str) -> tuple[str, str]:
    """``--encoder`` value -> (name, reference). ``NAME=REF`` puts REF in the group NAME
    (the table pools a group's runs: its spread covers the members, e.g. pretraining
    seeds, as well as the seeds of each); a bare REF is its own group."""
    m = GROUP.fullmatch(arg)
    if m is None:
        return arg, arg
    name, ref = m.groups()
    if "scratch" in (name, ref):
        raise ValueError(
            f"--encoder {arg}: scratch is its own column (give it as --encoder scratch); "
            "a group NAME=REF holds model references"
        )
    return name, ref


def load_encoders(args: list[str], cfg: BenchmarkConfig) -> list[Encoder]:
    """Read every reference once on the driver; all must share one feature config."""
    out, seen = [], set()
    for arg in args:
        name, ref = parse_encoder(arg)
        if ref in seen:
            raise ValueError(f"--encoder {ref} is given twice; give each encoder once")
        seen.add(ref)
        if ref == "scratch":
            out.append(Encoder("scratch", "scratch", None, FeatureConfig(), None))
            continue
        found = read_model(ref)
        encoder_of(found.model, ref)  # refuses what cannot be an encoder, before any work
        out.append(Encoder(name, ref, found.payload, found.features, found.normalization))
    trained = [e for e in out if e.payload is not None]
    features = trained[0].features if trained else FeatureConfig()
    for e in trained[1:]:
        if not e.features.same_frames(features):
            raise ValueError(
                f"encoders {trained[0].ref} and {e.ref} were trained on other "
                "feature settings; compare them on separate runs"
            )
    return [dataclasses.replace(e, features=features) for e in out]


def task_datasets(suite: dict, output: str, features: FeatureConfig) -> dict[str, str]:
    """Featurized dataset directory of every task (manifests featurized once, into
    OUTPUT/features/TASK, resumable; given datasets checked against ``features``)."""
    from pipeline.featurize import FeaturizeConfig, featurize

    out = {}
    for name, spec in suite.items():
        if "data" in spec:
            info = load_dataset_info(spec["data"])
            if not info.feature_config.same_frames(features):
                raise ValueError(
                    f"task {name}: {spec['data']} was featurized with other "
                    f"settings ({feature_diff(info.feature_config, features)})"
                )
            out[name] = spec["data"]
            continue
        target = f"{output}/features/{name}"
        if not exists(f"{target}/dataset.json"):
            # A labelled clip is one example: never cut into segments (an encoder
            # pretrained on segments reads whole clips made with its frame settings).
            whole = dataclasses.replace(features, segment_s=None)
            featurize(spec["manifest"], target, FeaturizeConfig(features=whole))
        out[name] = target
    return out


def weights_sha1(payload: dict[str, Any]) -> str:
    """sha1 of a checkpoint's architecture and weights (our payload format)."""
    h = hashlib.sha1(json.dumps(payload["config"], sort_keys=True, default=str).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_identity(e: Encoder, template: dict | None, cfg: BenchmarkConfig) -> str:
    """What a run takes from its encoder: the weights of a trained one; the architecture
    of scratch (another encoder's, or ``scratch_size``; its weights come from the seed)."""
    if e.payload is not None:
        return weights_sha1(e.payload)
    arch = template["config"] if template is not None else {"size": cfg.scratch_size}
    return "scratch " + json.dumps(arch, sort_keys=True, default=str)


def run_key(spec: dict[str, Any], data: str, encoder: str) -> str:
    """sha1 of what a run's result depends on: ``data`` (the task's rows, see
    :meth:`LabelledSet.sha1`), the method and, for an encoder's runs, ``encoder``
    (:func:`encoder_identity`), seed, length, normalisation, and the probe's layers or
    the fine-tuning recipe. Not the names (task, column, reference): renaming reuses."""
    fields: dict[str, Any] = {"version": KEY_VERSION, "data": data, "method": spec["method"]}
    if spec["method"] != "baseline":
        fields |= {
            "encoder": encoder,
            "seed": spec["seed"],
            "input_tdim": spec["input_tdim"],
            "normalization": spec["normalization"].to_dict(),
        }
        if spec["method"] == "probe":
            fields |= {"layers": spec["layers"], "batch_size": spec["batch_size"]}
        else:
            fields["recipe"] = to_dict(spec["recipe"])
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def read_kept(output: str, reuse: bool) -> dict[str, list[dict[str, Any]]]:
    """The runs kept in ``OUTPUT/_runs.json`` ({} when there is none). A file that is not
    the run record is an error when ``reuse`` (it would be overwritten), else ignored."""
    path = f"{output}/{RUNS_FILE}"
    try:
        kept = read_json(path) or {}
        problem = None if isinstance(kept, dict) else "not a mapping of run keys"
    except ValueError as err:
        problem = f"not JSON: {err}"
    if problem is None:
        return kept
    if not reuse:
        return {}
    raise ValueError(
        f"{path} is not the benchmark's run record ({problem}); delete it or give "
        "reuse=false (every run then runs again)"
    )


def plan_runs(
    tasks: list[str], encoders: list[Encoder], cfg: BenchmarkConfig
) -> list[dict[str, Any]]:
    """Every (task, method, encoder, member, seed) to run; deterministic ones once (the
    baseline, a trained encoder's probe)."""
    runs = []
    for task in tasks:
        if "baseline" in cfg.methods:
            runs.append(
                {"task": task, "method": "baseline", "encoder": "-", "member": "-", "seed": 0}
            )
        for method in [m for m in ("probe", "finetune") if m in cfg.methods]:
            for e in encoders:
                once = method == "probe" and e.payload is not None
                runs += [
                    {"task": task, "method": method, "encoder": e.name, "member": e.ref, "seed": s}
                    for s in range(1 if once else cfg.num_seeds)
                ]
    return runs


def finetune_recipe(cfg: BenchmarkConfig):
    """The fine-tuning recipe of the finetune method (None when it does not run)."""
    from jobs.finetuning.config import FinetuneConfig
    from jobs.kit.cli import ROOT
    from jobs.kit.config import load_config

    if "finetune" not in cfg.methods:
        return None
    path = Path(cfg.finetune_config)
    path = path if path.is_absolute() else ROOT / path
    return load_config(FinetuneConfig, path, list(cfg.finetune_overrides))


def run_benchmark(
    refs: list[str], suite_path: str, output: str, cfg: BenchmarkConfig
) -> BenchmarkResult:
    """Run the suite for the encoders ``refs`` ('scratch', or any model reference, as
    ``REF`` or ``NAME=REF``: see :func:`parse_encoder`).

    Raises:
        OutputBusyError: another job is writing ``output`` (refused before any work).
    """
    output = absolute(output)
    with OutputLock(output):
        return _benchmark(refs, suite_path, output, cfg)


def _benchmark(
    refs: list[str], suite_path: str, output: str, cfg: BenchmarkConfig
) -> BenchmarkResult:
    import ray

    start = time.perf_counter()
    encoders = load_encoders(refs, cfg)
    datasets = task_datasets(read_suite(suite_path), output, encoders[0].features)
    runs = plan_runs(list(datasets), encoders, cfg)
    # Each task's rows and each encoder are put in the object store once, not per run.
    sets = {task: LabelledSet.read(data) for task, data in datasets.items()}
    set_refs = {task: ray.put(d) for task, d in sets.items()}
    lengths = {
        task: cfg.input_tdim or auto_target_frames(d.rows.column("num_frames").to_numpy())
        for task, d in sets.items()
    }
    payloads = {e.ref: ray.put(e.payload) if e.payload is not None else None for e in encoders}
    by_ref = {e.ref: e for e in encoders}
    # Scratch takes the first trained encoder's architecture.
    trained = [e for e in encoders if e.payload is not None]
    first = trained[0].payload if trained else None
    template = payloads[trained[0].ref] if trained else None
    clip = cfg.clip_mean
    if clip is None:
        clip = any(e.normalization and e.normalization.clip_mean for e in encoders)
    recipe = finetune_recipe(cfg)
    remote = ray.remote(num_cpus=cfg.cpus_per_run)(run_one)
    data_sha1 = {task: d.sha1() for task, d in sets.items()}
    identity = {e.ref: encoder_identity(e, first, cfg) for e in encoders}
    kept = read_kept(output, cfg.reuse)
    results: list[list[dict[str, Any]] | None] = [None] * len(runs)
    keys, todo, pending = [], [], []
    for k, r in enumerate(runs):
        e, task = by_ref.get(r["member"]), r["task"]
        # An encoder's own statistics; scratch (none) takes the task's.
        stats = (e and e.normalization) or dataclasses.replace(
            sets[task].statistics, clip_mean=clip
        )
        spec = r | _settings(cfg, recipe) | {"input_tdim": lengths[task], "normalization": stats}
        keys.append(run_key(spec, data_sha1[task], identity.get(r["member"], "-")))
        if cfg.reuse and keys[k] in kept:  # this run's names, the kept run's numbers
            names = {n: r[n] for n in ("task", "encoder", "member")}
            results[k] = [row | names | {"reused": True} for row in kept[keys[k]]]
            continue
        todo.append(k)
        pending.append(remote.remote(spec, set_refs[task], payloads.get(r["member"]), template))
    if len(todo) < len(runs):
        logger.info(
            "%d of %d runs were done before into %s (same inputs): reused; running %d "
            "(reuse=false runs them all)",
            len(runs) - len(todo),
            len(runs),
            output,
            len(todo),
        )

    def finished(j: int, rows: list[dict[str, Any]]) -> None:
        k = todo[j]
        results[k] = [row | {"reused": False} for row in rows]
        kept[keys[k]] = rows
        write_json(f"{output}/{RUNS_FILE}", kept)  # as runs finish: a stopped run resumes

    _gather(pending, [runs[k] for k in todo], finished)
    rows = [row for rs in results for row in rs or []]
    table = format_table(rows)
    uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    run_id = _log(uri, cfg, refs, suite_path, output, rows, table)
    _write(output, rows, table)
    logger.info("benchmark took %.0f s", time.perf_counter() - start)
    return BenchmarkResult(output, rows, table, uri, run_id)


def _settings(cfg: BenchmarkConfig, recipe) -> dict[str, Any]:
    """What every run's spec takes from the config (see :func:`run_one`)."""
    return {
        "scratch_size": cfg.scratch_size,
        "batch_size": cfg.batch_size,
        "threads": max(1, int(cfg.cpus_per_run)),
        "layers": cfg.probe_layers,
        "recipe": recipe,
    }


def _gather(pending: list, runs: list[dict[str, Any]], finished) -> None:
    """Wait for the runs, calling ``finished(k, rows)`` for the k-th as it finishes and
    logging it (a suite with fine-tuning runs for many minutes)."""
    import ray

    index = {ref: k for k, ref in enumerate(pending)}
    waiting = list(pending)
    while waiting:
        (ref,), waiting = ray.wait(waiting, num_returns=1)
        k = index[ref]
        rows = ray.get(ref)
        finished(k, rows)
        r, done = runs[k], len(pending) - len(waiting)
        logger.info(
            "run %d/%d: %s %s %s seed %d: test accuracy %.3f (%.0f s)",
            done,
            len(pending),
            r["task"],
            r["method"],
            r["member"],
            r["seed"],
            rows[0]["test/accuracy"],
            rows[0]["seconds"],
        )


def summarize(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(task, method, encoder) -> mean, std and n of test accuracy over seeds and the
    group's members, and the number of members; for a group of several members also
    each member's mean (over its seeds) and the std of those means (``between_std``:
    how much the encoders themselves differ, e.g. pretraining runs of one recipe)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["encoder"]), []).append(r)
    out = {}
    for k, runs in groups.items():
        v = [r["test/accuracy"] for r in runs]
        by_member: dict[str, list[float]] = {}
        for r in runs:
            by_member.setdefault(r["member"], []).append(r["test/accuracy"])
        out[k] = {
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "n": len(v),
            "members": len(by_member),
        }
        if len(by_member) > 1:
            means = {m: float(np.mean(a)) for m, a in sorted(by_member.items())}
            out[k] |= {"member_means": means, "between_std": float(np.std(list(means.values())))}
    return out


def summary_metrics(s: dict) -> tuple[dict[str, str], dict[str, float]]:
    """One :func:`summarize` entry as a child run's (params, metrics): the numbers as
    ``test/accuracy_<name>``; a group's members as params ``member<i>`` and their means
    as ``test/accuracy_member<i>``."""
    means = s.get("member_means", {})
    metrics = {f"test/accuracy_{k}": float(v) for k, v in s.items() if k != "member_means"}
    metrics |= {f"test/accuracy_member{i}": float(v) for i, v in enumerate(means.values())}
    return {f"member{i}": m for i, m in enumerate(means)}, metrics


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per task, one column per method x encoder (test accuracy, mean
    +- std over seeds and a group's members (n)); below, each group's members and their
    means task by task."""
    stats = summarize(rows)
    columns = sorted({(m, e) for _, m, e in stats}, key=lambda c: (c[0] != "baseline", c))
    tasks = sorted({t for t, _, _ in stats})
    head = ["task"] + [
        ("baseline (pooled fbank)" if m == "baseline" else f"{m}: {e}") for m, e in columns
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in tasks:
        cells = [t]
        for m, e in columns:
            s = stats.get((t, m, e))
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f} ({s['n']})" if s else "")
        lines.append("| " + " | ".join(cells) + " |")
    members: dict[str, set[str]] = {}
    for r in rows:
        members.setdefault(r["encoder"], set()).add(r["member"])
    for name, refs in members.items():
        if refs == {name}:
            continue
        count = f"{len(refs)} encoders, " if len(refs) > 1 else ""
        lines.append(f"\n{name}: {count}{', '.join(sorted(refs))}")
        for (t, m, e), s in sorted(stats.items()):
            if e == name and "member_means" in s:
                each = " / ".join(f"{v:.3f}" for v in s["member_means"].values())
                lines.append(
                    f"- {t} {m}: {each} (each encoder's mean; std between them "
                    f"{s['between_std']:.3f})"
                )
    total, reused = count_runs(rows)
    if reused:
        lines.append(
            f"\n{reused} of {total} runs reused from earlier benchmarks into this output "
            f"(same inputs, kept in {RUNS_FILE}; reuse=false runs them again)"
        )
    return "\n".join(lines)


def count_runs(rows: list[dict]) -> tuple[int, int]:
    """(runs, reused runs) of ``rows`` (a probe of every layer is one run of many rows)."""
    runs, reused = set(), set()
    for r in rows:
        run = (r["task"], r["method"].split("@")[0], r["member"], r["seed"])
        runs.add(run)
        if r.get("reused"):
            reused.add(run)
    return len(runs), len(reused)


def _write(output: str, rows: list[dict], table: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    summary = [
        {"task": t, "method": m, "encoder": e, **s} for (t, m, e), s in summarize(rows).items()
    ]
    with fs.open(f"{root}/results.json", "w") as f:
        json.dump({"runs": rows, "summary": summary}, f, indent=2)
    with fs.open(f"{root}/results.md", "w") as f:
        f.write(table + "\n")


def _log(
    uri: str,
    cfg: BenchmarkConfig,
    refs: list[str],
    suite: str,
    output: str,
    rows: list[dict],
    table: str,
) -> str:
    """Parent run (params, the table) and one child run per task x method x encoder."""
    import mlflow

    params = flatten(to_dict(cfg)) | {
        "encoders": ",".join(refs),
        "suite": suite,
        "output": output,
        "reused_runs": count_runs(rows)[1],
    }
    parent = start_run(uri, cfg.mlflow.experiment, cfg.name, f"{output}/{cfg.name}", params)
    client = mlflow.MlflowClient(uri)
    for (task, method, encoder), s in summarize(rows).items():
        members, summary = summary_metrics(s)
        child = start_run(
            uri,
            cfg.mlflow.experiment,
            f"{task}/{method}/{encoder}",
            f"{output}/{cfg.name}/{task}/{method}/{encoder}",
            {"task": task, "method": method, "encoder": encoder} | members,
            tags={"mlflow.parentRunId": parent},
        )
        seeds = [
            r for r in rows if (r["task"], r["method"], r["encoder"]) == (task, method, encoder)
        ]
        client.log_batch(
            child,
            metrics=[  # step k: the k-th run (seed k of an encoder; members one after another)
                mlflow.entities.Metric("test/accuracy", r["test/accuracy"], 0, k)
                for k, r in enumerate(seeds)
            ]
            + [mlflow.entities.Metric(k, v, 0, 0) for k, v in summary.items()],
        )
        end_run(uri, child)
    client.log_text(parent, table + "\n", "results.md")
    end_run(uri, parent)
    return parent


def describe(result: BenchmarkResult) -> str:
    return "\n".join(
        [
            result.table,
            "",
            f"results      {result.output}/results.md, results.json",
            f"mlflow       parent run {result.mlflow_run_id} at {result.mlflow_uri}",
            f"open the UI  {ui_command(result.mlflow_uri)}",
        ]
    )
