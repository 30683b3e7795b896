"""What every job shares: logging set-up, Ray connection, config CLI."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from pipeline.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


RAY_ENV_DEFAULTS = {
    # Ray Data 2.60 starts 32 Parquet footer-reader actors per read; on small clusters
    # that costs seconds per pass over the data. 4 is plenty for our shard counts.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "4",
}
"""Environment every Ray process of ours gets (infra/runtime_env.yaml sets the same)."""


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster this job runs on, or start a local one.

    Under ``ray job submit`` (or with RAY_ADDRESS set) this connects to that cluster;
    otherwise it starts a local Ray with this machine's CPUs (``num_cpus`` overrides).
    """
    import ray

    if ray.is_initialized():
        return
    # Only what this process's environment lacks: under `ray job submit` the job's
    # runtime_env (infra/runtime_env.yaml) already sets these, and Ray refuses a driver
    # runtime_env that repeats a key of the job's.
    missing = {k: v for k, v in RAY_ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(missing)
    env = {"env_vars": missing} if missing else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env)
    else:
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs
        # to free a run's worker resources when its controller dies (a trial that Tune's
        # ASHA stops); without it those CPUs stay reserved and later trials never start.
        ray.init(num_cpus=num_cpus, include_dashboard=True, runtime_env=env)


def config_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file (defaults apply for keys it omits)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. clips_per_shard=64")
    return ap


def resolve_config(cls, args: argparse.Namespace):
    """Load the config; print it and exit when --print-config."""
    cfg = load_config(cls, args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    return cfg
