"""What every entry point shares: logging set-up and the config command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from jobs.kit.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]
"""The project checkout (jobs/kit/cli.py -> ..)."""


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def config_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", help="YAML file (defaults apply for keys it omits)")
    ap.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    ap.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. clips_per_shard=64")
    return ap


def resolve_config(cls, args: argparse.Namespace):
    """Load the config; print it and exit when --print-config. A bad config is one line
    on stderr (``error: ...``) and exit status 2, the traceback only with --debug."""
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except (ValueError, TypeError, OSError, yaml.YAMLError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    return cfg


def run_job(args: argparse.Namespace, body: Callable[[], int]) -> int:
    """Run a job's body and return its exit status. The errors a user causes and can fix
    (bad input, paths, an output in use: ``ValueError`` and ``OSError``) are one line on
    stderr and status 2; a loss that became non-finite is status 3; with ``--debug``
    they raise with the traceback. Anything else is a bug and keeps its traceback."""
    from jobs.kit.training import NonFiniteLossError

    try:
        return body()
    except (NonFiniteLossError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 3 if isinstance(err, NonFiniteLossError) else 2


def one_line(err: BaseException) -> str:
    """An error's message on one line; for an error raised in a Ray task or actor, the
    message of its cause (without the remote traceback Ray prepends)."""
    cause = getattr(err, "cause", None)
    err = cause if isinstance(cause, BaseException) else err
    return " ".join(str(err).split()) or type(err).__name__
