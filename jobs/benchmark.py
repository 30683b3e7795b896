"""Is an encoder any good? The evaluation suite: per task, a pooled-fbank logistic
baseline (no encoder) and a linear probe on each encoder's frozen clip embeddings.

Local (starts a local Ray when none is reachable):
    python jobs/benchmark.py --encoder runs/pretrain --encoder scratch \
        --suite data/suite/suite.yaml --output runs/bench
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/benchmark.py --encoder s3://bucket/ssast/pretrain/final/ssast.pt \
        --encoder SSAST-Base-Patch-400.pth --suite s3suite.yaml --output s3://bucket/bench

--encoder (repeatable) is 'scratch' (the same architecture as the other encoders, random
weights, one run per seed) or any model reference (file, directory, s3://, runs:/,
models:/), optionally named: NAME=REF. References given the same NAME are one column
whose mean and spread pool their runs (e.g. one recipe pretrained with several seeds).
--suite is a YAML file `tasks: {NAME: {manifest: PATH} or {data: DIR}}` whose
tasks have label and split (train / valid / test) columns; manifests are featurized once
into OUTPUT/features/. Writes OUTPUT/results.md (test accuracy, mean +- std over seeds)
and OUTPUT/results.json, and logs an MLflow parent run with one child per task x method x
encoder. A rerun into the same OUTPUT reuses the runs done there before with the same
inputs (OUTPUT/_runs.json, written as runs finish: a stopped benchmark resumes);
reuse=false runs everything again.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/benchmark.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.evaluation.config import BenchmarkConfig
from jobs.evaluation.driver import describe, run_benchmark
from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument(
        "--encoder",
        action="append",
        required=True,
        help="scratch | [NAME=]REF, REF: CHECKPOINT | DIR | runs:/... | models:/... "
        "(repeatable; one NAME for several REFs pools them in one column)",
    )
    ap.add_argument("--suite", required=True, help="suite YAML (tasks: {NAME: {manifest}})")
    ap.add_argument("--output", required=True, help="output directory (local, s3://)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = resolve_config(BenchmarkConfig, args)
    init_ray(args.num_cpus)
    return run_job(args, lambda: _run(args, cfg))


def _run(args, cfg: BenchmarkConfig) -> int:
    print(describe(run_benchmark(args.encoder, args.suite, args.output, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
