"""Featurize audio into sharded Parquet fbank features with Ray Data.

Local (starts a local Ray):
    python jobs/featurize.py --input data/manifest.csv --output data/features
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/featurize.py --input s3://bucket/manifest.parquet \
        --output s3://bucket/features/v1 --config jobs/configs/featurize.yaml

The input is a manifest (CSV, JSONL or Parquet with a `path` column) or a directory /
glob of audio files. Reruns into the same --output resume and are idempotent. The exit
code is non-zero when the share of bad inputs exceeds max_error_fraction. --dry-run
reads the manifest and prints the plan (rows, shards, shards already committed in
--output) without starting Ray or reading audio.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/featurize.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray
from pipeline.featurize import (
    FeaturizeConfig,
    check_output,
    featurize,
    finished_shards,
    plan_featurize,
)

logger = logging.getLogger("featurize")


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument("--input", required=True, help="manifest file, directory or glob")
    ap.add_argument("--output", required=True, help="dataset directory (local or s3://)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; no Ray, no audio")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = resolve_config(FeaturizeConfig, args)
    if args.dry_run:
        return run_job(args, lambda: _plan(args, cfg))
    init_ray(args.num_cpus)
    return run_job(args, lambda: _featurize(args, cfg))


def _plan(args, cfg: FeaturizeConfig) -> int:
    start = time.perf_counter()
    plan = plan_featurize(args.input, cfg)
    root = args.output.rstrip("/")
    resumes = check_output(root, plan) is not None
    summary = plan.summary() | {
        "output": root,
        "shards_committed": len(finished_shards(root)) if resumes else 0,
        "plan_s": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _featurize(args, cfg: FeaturizeConfig) -> int:
    summary = featurize(args.input, args.output, cfg)
    print(summary.table())
    if summary.error_fraction > cfg.max_error_fraction:
        logger.error(
            "%.1f%% of inputs failed (> max_error_fraction %.1f%%); see %s/errors",
            100 * summary.error_fraction,
            100 * cfg.max_error_fraction,
            args.output,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
