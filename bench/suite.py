"""The evaluation suite's costs, in one run: the probe's share of pretraining time and the
wall time of jobs/benchmark.py on this machine.

    .venv/bin/python bench/suite.py                      # the full suite (scale 1)
    .venv/bin/python bench/suite.py --scale 0.25 --steps 100 --every 25

Generates the bundled suite, featurizes its pool in 2 s segments, then pretrains the tiny
model with jobs/configs/pretrain_small.yaml for --steps steps twice, side by side: without
the probe and with the probe on `events` every --every steps. The probe's share is
(wall with - wall without) / wall with; the probe's own seconds (perf/probe_s, in a driver
thread beside the workers) are reported too. Then the benchmark job (baseline and probe,
the pretrained encoder and scratch; --finetune adds the finetune method) on all tasks, with
its wall time. Peak RSS of this driver process is in the output.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the jobs/ package

import mlflow  # noqa: E402

from jobs.evaluation.config import BenchmarkConfig  # noqa: E402
from jobs.evaluation.driver import run_benchmark  # noqa: E402
from jobs.kit.cli import ROOT  # noqa: E402
from jobs.kit.cluster import init_ray  # noqa: E402
from jobs.kit.config import build, load_config  # noqa: E402
from jobs.pretraining.config import PretrainConfig  # noqa: E402
from jobs.pretraining.driver import run_pretraining  # noqa: E402
from pipeline.features import FeatureConfig  # noqa: E402
from pipeline.featurize import FeaturizeConfig, featurize  # noqa: E402
from pipeline.suite import write_suite  # noqa: E402


def pretrain(pool: str, out: Path, args, uri: str, probe: str | None) -> dict[str, float]:
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.every}",
        f"train.log_every={min(args.every, 50)}",
        f"mlflow.tracking_uri={uri}",
        f"name={'probe' if probe else 'plain'}",
    ]
    if probe:
        overrides += [f"eval.every_steps={args.every}", f"eval.data={probe}", "eval.task=events"]
    cfg = load_config(PretrainConfig, ROOT / "jobs/configs/pretrain_small.yaml", overrides)
    start = time.perf_counter()
    result = run_pretraining(pool, str(out / cfg.name), cfg)
    wall = time.perf_counter() - start
    client = mlflow.MlflowClient(uri)
    probe_s = [m.value for m in client.get_metric_history(result.mlflow_run_id, "perf/probe_s")]
    curve = client.get_metric_history(result.mlflow_run_id, "probe/events/accuracy")
    return {
        "wall_s": wall,
        "probe_s": sum(probe_s),
        "probes": len(probe_s),
        "curve": {m.step: m.value for m in curve},
        "encoder": f"{result.final_dir}/ssast.pt",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--finetune", action="store_true", help="add the finetune method")
    ap.add_argument("--out", default="bench/results/suite.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init_ray(num_cpus=None)
        t = time.perf_counter()
        manifests = write_suite(tmp / "suite", seed=0, scale=args.scale)
        generate_s = time.perf_counter() - t
        t = time.perf_counter()
        featurize(
            str(manifests["pool"]),
            str(tmp / "pool"),
            FeaturizeConfig(features=FeatureConfig(segment_s=2.0)),
        )
        featurize(str(manifests["events"]), str(tmp / "events"), FeaturizeConfig())
        featurize_s = time.perf_counter() - t
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        plain = pretrain(str(tmp / "pool"), tmp, args, uri, None)
        probed = pretrain(str(tmp / "pool"), tmp, args, uri, str(tmp / "events"))
        methods = ["baseline", "probe", *(["finetune"] if args.finetune else [])]
        cfg = build(BenchmarkConfig, {"methods": methods, "mlflow": {"tracking_uri": uri}})
        t = time.perf_counter()
        bench = run_benchmark(
            [probed["encoder"], "scratch"], str(tmp / "suite" / "suite.yaml"), str(tmp / "b"), cfg
        )
        benchmark_s = time.perf_counter() - t
    res = {
        "config": vars(args),
        "generate_s": generate_s,
        "featurize_pool_and_events_s": featurize_s,
        "pretrain_without_probe": {k: v for k, v in plain.items() if k != "encoder"},
        "pretrain_with_probe": {k: v for k, v in probed.items() if k != "encoder"},
        "probe_share_of_wall": (probed["wall_s"] - plain["wall_s"]) / probed["wall_s"],
        "probe_seconds_share": probed["probe_s"] / probed["wall_s"],
        "benchmark_s": benchmark_s,
        "benchmark_table": bench.table,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"suite scale {args.scale}: generated in {generate_s:.0f} s")
    print(
        f"pretraining {args.steps} steps: {plain['wall_s']:.0f} s without the probe, "
        f"{probed['wall_s']:.0f} s with {probed['probes']} probes "
        f"(share of wall {res['probe_share_of_wall']:+.1%}; the probe's own "
        f"{probed['probe_s']:.0f} s = {res['probe_seconds_share']:.1%} of the run, beside it)"
    )
    print(f"probe curve (events test accuracy by step): {probed['curve']}")
    print(f"benchmark ({', '.join(methods)}; pretrained + scratch): {benchmark_s:.0f} s")
    print(bench.table)


if __name__ == "__main__":
    main()
