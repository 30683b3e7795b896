"""The Ray Train per-worker loop of MSPM pretraining.

Every worker calls ``ray.train.report`` once per log interval (rank 0 attaches the
checkpoint when one is due), so all ranks report the same number of times.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch

from jobs.pretrain_config import OptimSection, PretrainConfig
from pipeline.config import build
from pipeline.schema import write_json
from ssast import SSAST, SSASTConfig
from ssast.checkpoint import checkpoint_payload

logger = logging.getLogger("pretrain")
STATE_FILE = "state.pt"
METRIC_KEYS = ("loss", "nce", "mse", "acc")


class LrSchedule:
    """Linear warm-up, then cosine / constant / halving on an accuracy plateau."""

    def __init__(self, cfg: OptimSection, max_steps: int) -> None:
        self.cfg, self.max_steps = cfg, max_steps
        self.scale, self.best, self.bad = 1.0, -math.inf, 0

    def lr(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "cosine":
            span = max(1, self.max_steps - c.warmup_steps)
            progress = min(1.0, (step - c.warmup_steps) / span)
            return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))
        return c.lr * self.scale

    def observe(self, accuracy: float) -> None:
        """Feed the interval's masked-patch accuracy (plateau schedule only)."""
        if self.cfg.schedule != "plateau":
            return
        if accuracy > self.best:
            self.best, self.bad = accuracy, 0
        else:
            self.bad += 1
            if self.bad > self.cfg.plateau_patience:
                self.scale, self.bad = self.scale / 2, 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], int(state["bad"])


def make_optimizer(model: torch.nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": PretrainConfig dict, "model": SSASTConfig
    dict, "mlflow": {"uri", "run_id"}, "nonfinite_marker": path}."""
    import ray.train
    import ray.train.torch

    cfg = build(PretrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # identical init on every rank
    model = SSAST(SSASTConfig.from_dict(config["model"])).to(device)
    opt = make_optimizer(model, cfg.optim)
    sched = LrSchedule(cfg.optim, cfg.train.max_steps)
    step = _restore(model, opt, sched)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 7919 + rank * 104729 + step)
    ddp = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    tracker = _Tracker(config["mlflow"]) if rank == 0 else None
    batches = _batches(ray.train.get_dataset_shard("train"), cfg)
    use_bf16 = cfg.train.bf16 and device.type == "cuda"
    if rank == 0:
        logger.info("start at step %d of %d, %d worker(s) on %s", step, cfg.train.max_steps,
                    world, device)
        if step:
            tracker.log({"resumed_from_step": step}, step)

    sums = dict.fromkeys(METRIC_KEYS, 0.0)
    interval_start, wait, steps_in_interval = time.perf_counter(), 0.0, 0
    while step < cfg.train.max_steps:
        lr = sched.lr(step)
        for group in opt.param_groups:
            group["lr"] = lr
        for micro in range(cfg.optim.accumulate):
            t = time.perf_counter()
            x = next(batches)["fbank"].to(device, non_blocking=True)
            wait += time.perf_counter() - t
            sync = nullcontext() if micro == cfg.optim.accumulate - 1 or world == 1 \
                else ddp.no_sync()
            amp = torch.autocast("cuda", torch.bfloat16) if use_bf16 else nullcontext()
            with sync, amp:
                out = ddp(x, two_pass=cfg.model.two_pass, generator=gen)
                (out["loss"] / cfg.optim.accumulate).backward()
            for k in METRIC_KEYS:
                sums[k] += float(out[k].detach()) / cfg.optim.accumulate
        if not _all_finite(out["loss"].detach(), world):
            _report_nonfinite(step, lr, rank, config["nonfinite_marker"])
            return
        if cfg.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        steps_in_interval += 1
        if step % cfg.train.log_every and step != cfg.train.max_steps:
            continue
        elapsed = time.perf_counter() - interval_start
        metrics = _interval_metrics(sums, steps_in_interval, world, device)
        metrics.update({
            "lr": lr, "step": step,
            "samples_per_s": world * cfg.train.batch_size * cfg.optim.accumulate
            * steps_in_interval / elapsed,
            "ms_per_step": 1e3 * elapsed / steps_in_interval,
            "data_wait_fraction": wait / elapsed,
        })
        sched.observe(metrics["acc"])
        if rank == 0:
            _log_interval(tracker, metrics, step, cfg, model, x, gen)
        _report(metrics, step, cfg, rank, partial(_state, model, opt, sched, step, cfg))
        sums = dict.fromkeys(METRIC_KEYS, 0.0)
        interval_start, wait, steps_in_interval = time.perf_counter(), 0.0, 0


def _batches(shard, cfg: PretrainConfig):
    """Endless stream of {"fbank": (B, T, F)} batches over repeated epochs of the shard."""
    epoch = 0
    while True:
        got = False
        for batch in shard.iter_torch_batches(
            batch_size=cfg.train.batch_size, dtypes=torch.float32, drop_last=True,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=cfg.train.seed + epoch if cfg.data.shuffle_buffer else None,
            prefetch_batches=cfg.data.prefetch_batches,
        ):
            got = True
            yield batch
        if not got:
            raise ValueError(
                f"a worker's data shard has fewer than train.batch_size="
                f"{cfg.train.batch_size} rows; use a smaller batch or fewer workers"
            )
        epoch += 1


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    flag = torch.isfinite(loss).float().reshape(1)
    if world > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def _interval_metrics(sums: dict[str, float], steps: int, world: int, device) -> dict:
    values = torch.tensor([sums[k] / steps for k in METRIC_KEYS], device=device)
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return dict(zip(METRIC_KEYS, values.tolist(), strict=True))


def _report_nonfinite(step: int, lr: float, rank: int, marker: str) -> None:
    """Stop cleanly (no retries, no checkpoint) and leave the reason for the driver.

    Ray Train's result only carries the metrics of the last checkpoint, so rank 0 writes
    a small JSON marker into the run's storage; the driver turns it into the error.
    """
    import ray.train

    if rank == 0:
        logger.error("non-finite loss at step %d (lr %.3g); stopping, last checkpoint kept",
                     step + 1, lr)
        write_json(marker, {"step": step + 1, "lr": lr})
    ray.train.report({"nonfinite_step": step + 1, "nonfinite_lr": lr, "step": step})


def _log_interval(tracker: _Tracker, metrics: dict, step: int, cfg: PretrainConfig,
                  model: SSAST, x: torch.Tensor, gen: torch.Generator) -> None:
    """Rank 0: the compact log line, MLflow metrics and, when due, a picture."""
    logger.info("step %6d  loss %.4f  nce %.4f  mse %.4f  acc %.3f  lr %.2e  %5.0f ms/step"
                "  %6.2f samples/s  wait %.1f%%", step, metrics["loss"], metrics["nce"],
                metrics["mse"], metrics["acc"], metrics["lr"], metrics["ms_per_step"],
                metrics["samples_per_s"], 100 * metrics["data_wait_fraction"])
    tracker.log(metrics, step)
    if cfg.train.image_every and step % cfg.train.image_every < cfg.train.log_every:
        tracker.picture(model, x[:1], gen, step)


def _report(metrics: dict, step: int, cfg: PretrainConfig, rank: int, state) -> None:
    """Every rank reports; rank 0 attaches a checkpoint (``state()``) when one is due."""
    import ray.train

    due = step % cfg.train.checkpoint_every < cfg.train.log_every or step == cfg.train.max_steps
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if due and rank == 0:
            torch.save(state(), os.path.join(tmp, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=f"step_{step:08d}" if checkpoint else None)


def _state(model: SSAST, opt, sched: LrSchedule, step: int, cfg: PretrainConfig) -> dict:
    """Everything a resume needs, in our checkpoint format (loadable by load_checkpoint)."""
    return checkpoint_payload(model, extra={
        "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "step": step,
        "torch_rng": torch.get_rng_state(), "run_config": cfg_dict(cfg),
    })


def cfg_dict(cfg: PretrainConfig) -> dict:
    from pipeline.config import to_dict

    return to_dict(cfg)


def _restore(model: SSAST, opt, sched: LrSchedule) -> int:
    """Load the latest checkpoint of this run, if any; returns the step to continue from."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    logger.info("resumed from step %d", state["step"])
    return int(state["step"])


class _Tracker:
    """Rank 0's MLflow logging into the run the driver created."""

    def __init__(self, settings: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tracking_uri(settings["uri"])
        self.mlflow, self.run_id = mlflow, settings["run_id"]
        self.client = mlflow.MlflowClient()

    def log(self, metrics: dict[str, float], step: int) -> None:
        names = {"loss": "train/loss", "nce": "train/loss_nce", "mse": "train/loss_mse",
                 "acc": "train/accuracy", "lr": "train/lr", "samples_per_s":
                 "perf/samples_per_s", "ms_per_step": "perf/ms_per_step",
                 "data_wait_fraction": "perf/data_wait_fraction",
                 "resumed_from_step": "train/resumed_from_step"}
        entities = [self.mlflow.entities.Metric(names[k], float(v), int(time.time() * 1000),
                                                step) for k, v in metrics.items() if k in names]
        self.client.log_batch(self.run_id, metrics=entities)

    def picture(self, model: SSAST, x: torch.Tensor, gen: torch.Generator, step: int) -> None:
        from jobs.pictures import mask_figure

        fig = mask_figure(model, x, gen)
        self.client.log_figure(self.run_id, fig, f"pictures/step_{step:08d}.png")
