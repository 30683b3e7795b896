"""Featurize audio into sharded Parquet fbank features with Ray Data.

Local (starts a local Ray):
    python jobs/featurize.py --input data/manifest.csv --output data/features
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/featurize.py --input s3://bucket/manifest.parquet \
        --output s3://bucket/features/v1 --config jobs/configs/featurize.yaml

The input is a manifest (CSV, JSONL or Parquet with a `path` column) or a directory /
glob of audio files. Reruns into the same --output resume and are idempotent. The exit
code is non-zero when the share of bad inputs exceeds max_error_fraction.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/featurize.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray
from pipeline.featurize import FeaturizeConfig, featurize

logger = logging.getLogger("featurize")


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument("--input", required=True, help="manifest file, directory or glob")
    ap.add_argument("--output", required=True, help="dataset directory (local or s3://)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = resolve_config(FeaturizeConfig, args)
    init_ray(args.num_cpus)
    return run_job(args, lambda: _featurize(args, cfg))


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
