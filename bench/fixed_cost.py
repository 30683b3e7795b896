"""The fixed cost of a small job, phase by phase: a 6-step tiny pretraining run end to end.

    .venv/bin/python bench/fixed_cost.py            # ~3 min: data, then 2 timed runs

What a user pays each time they try something small: ``python jobs/pretrain.py`` on a
featurized set of 200 clips (the sample corpus), tiny model, 6 steps, from the shell
command to its exit, in a fresh process with its own local Ray and a fresh MLflow store.
The wall time is split into the phases the job logs (``phase NAME: S s``, also MLflow
metrics ``time/NAME_s`` of the run): interpreter start-up and imports, Ray start, the data
plan, the MLflow run, Ray Train's fit (of which the worker group's start-up, the first
step with the model's build, and the later steps, from rank 0), the export, the
registry; ``exit`` is what is left after the last phase (Ray's shutdown, interpreter
exit). ``steps_compute`` estimates the training itself (all steps at the pace of the
later ones) and ``fixed`` is the wall time without it: the fixed cost of the job. Each
run gets a fresh output and MLflow store, so nothing is resumed or cached between them;
the OS file cache is warm after the first.
``--shared-store``: the runs share one MLflow store as a user's runs share ``mlruns/``
(run 0 creates its tables, the others find them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASE = re.compile(r"phase (\w+): ([0-9.]+) s")
DRIVER_PHASES = ("startup", "ray_start", "imports", "data_plan", "mlflow_run", "fit")
WORKER_PHASES = ("worker_start", "first_step", "later_steps")
AFTER_FIT = ("export", "registry")


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{cmd[1]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return wall, out.stdout + out.stderr


def pretrain_once(data: Path, tmp: Path, k: int, steps: int, store: str) -> dict[str, float]:
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / store}"}
    cmd = [
        sys.executable,
        "jobs/pretrain.py",
        "--data",
        str(data),
        "--output",
        str(tmp / f"run{k}"),
        "model.size=tiny",
        f"train.max_steps={steps}",
    ]
    wall, log = run(cmd, env)
    phases: dict[str, float] = {}
    for name, seconds in PHASE.findall(log):
        phases[name] = phases.get(name, 0.0) + float(seconds)
    missing = [p for p in (*DRIVER_PHASES, *WORKER_PHASES, *AFTER_FIT) if p not in phases]
    if missing:
        raise RuntimeError(f"the job logged no phase {missing}; its output:\n{log}")
    phases["exit"] = wall - sum(phases[p] for p in (*DRIVER_PHASES, *AFTER_FIT))
    # The training itself: every step at the pace of the steps after the first.
    compute = phases["later_steps"] * steps / (steps - 1)
    return {"wall": wall, **phases, "steps_compute": compute, "fixed": wall - compute}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument(
        "--shared-store",
        action="store_true",
        help="one MLflow store for all runs, as a user's runs share mlruns/ (run 0 creates "
        "it; the others open an existing one); default: a fresh store each run",
    )
    ap.add_argument("--out", default="bench/results/fixed_cost.json")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the later steps time the training itself)")
    from pipeline.synth import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_corpus(tmp / "corpus", num_clips=args.clips)
        env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'prep.db'}"}
        prep, _ = run(
            [
                sys.executable,
                "jobs/featurize.py",
                "--input",
                str(manifest),
                "--output",
                str(tmp / "ds"),
            ],
            env,
        )
        stores = ["mlflow.db" if args.shared_store else f"mlflow{k}.db" for k in range(args.runs)]
        runs = [pretrain_once(tmp / "ds", tmp, k, args.steps, stores[k]) for k in range(args.runs)]
    keys = list(runs[0])
    res = {
        "featurize_job_s": prep,
        "runs": runs,
        "median": {k: statistics.median(r[k] for r in runs) for k in keys},
        "config": vars(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"featurize job ({args.clips} clips, untimed preparation): {prep:.1f} s")
    store = "one MLflow store (run 0 creates it)" if args.shared_store else "fresh MLflow stores"
    print(f"pretrain job, tiny, {args.steps} steps, {args.runs} runs, {store} (s):")
    print("phase          " + "  ".join(f"run {k:<3d}" for k in range(args.runs)) + "  median")
    for k in keys:
        sub = "  of which " if k in WORKER_PHASES else ""
        cells = "  ".join(f"{r[k]:7.1f}" for r in runs)
        print(f"{sub + k:<15s}{cells}  {res['median'][k]:6.1f}")


if __name__ == "__main__":
    main()
