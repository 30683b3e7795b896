"""The training-worker kit both Ray Train loops are built from: seeds, per-step
finiteness, the stop on a non-finite loss, checkpoint save / restore and the report.

Rules both jobs follow:
- seeds: model init from ``train.seed`` (the same weights on every rank); each rank's
  masks / augmentation / shuffling from :func:`worker_generator`.
- a non-finite loss on any rank stops every rank at that step: rank 0 leaves a marker
  (:func:`stop_marker`) with the step and learning rate, no checkpoint is written after
  it, the run is not retried, and the driver raises :class:`NonFiniteLossError` naming
  the last good checkpoint (:func:`raise_if_stopped`).
- every rank calls :func:`report` the same number of times; rank 0 attaches the
  checkpoint (``state.pt``, our checkpoint format plus the loop's state).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from pipeline.storage import read_json, remove, write_json
from ssast.checkpoint import read_checkpoint

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
"""The file inside every Ray Train checkpoint directory of ours."""


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the last good checkpoint is kept."""


def worker_generator(seed: int, rank: int, position: int, device) -> torch.Generator:
    """The rank's random stream, distinct per rank and per resume position (step/epoch)."""
    return torch.Generator(device=device).manual_seed(seed * 7919 + rank * 104729 + position)


def all_finite(loss: torch.Tensor, world: int) -> bool:
    """True when the loss is finite on every rank (all ranks get the same answer)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if world > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def stop_marker(storage: str, name: str) -> str:
    """Where rank 0 records a non-finite stop (Ray Train's result carries only the last
    checkpoint's metrics, so the reason travels as a small file in the run's storage)."""
    return f"{storage}/{name}/_nonfinite.json"


def clear_stop(marker: str) -> None:
    """A rerun after fixing the cause starts clean."""
    remove(marker)


def record_stop(marker: str, step: int, lr: float, rank: int) -> None:
    """Rank 0: log and leave the marker. Every rank then returns from its loop."""
    if rank == 0:
        logger.error(
            "non-finite loss at step %d (lr %.3g); stopping, last checkpoint kept", step, lr
        )
        write_json(marker, {"step": step, "lr": lr})


def raise_if_stopped(marker: str, result) -> None:
    """NonFiniteLossError with the step, lr and last good checkpoint, if the run stopped."""
    stopped = read_json(marker)
    if stopped is None:
        return
    last = result.checkpoint.path if result.checkpoint else "none"
    raise NonFiniteLossError(
        f"loss became NaN/inf at step {stopped['step']} (lr {stopped['lr']:.3g}); last "
        f"good checkpoint: {last}. Lower optim.lr, set optim.grad_clip_norm, or check "
        "the data statistics"
    )


def report(
    metrics: dict[str, Any],
    rank: int,
    state: Callable[[], dict] | None = None,
    dir_name: str | None = None,
) -> None:
    """Every rank reports ``metrics``; rank 0 also saves ``state()`` as the checkpoint
    ``dir_name`` when ``state`` is given."""
    import ray.train

    _quiet_report_lines()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state is not None and rank == 0:
            torch.save(state(), os.path.join(tmp, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name if checkpoint else None
        )


@functools.cache
def _quiet_report_lines() -> None:
    """Ray Train V2 logs every ``ray.train.report`` at INFO from every rank, the whole
    metrics dict in one long line, next to our compact rank-0 line. Its logger is named
    by the module's file path; raising it to WARNING keeps its warnings and errors."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its lines stay, nothing else changes
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def restore() -> dict[str, Any] | None:
    """The state saved in this run's latest checkpoint, or None on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_state(d)


def load_state(directory: str) -> dict[str, Any]:
    """``state.pt`` of a checkpoint directory, weights only."""
    return read_checkpoint(os.path.join(directory, STATE_FILE))
