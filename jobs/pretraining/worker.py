"""The Ray Train per-worker loop of MSPM pretraining.

Every worker calls ``report`` once per log interval (rank 0 attaches the checkpoint when
one is due), so all ranks report the same number of times. Seeds, the non-finite stop,
checkpoints and MLflow logging come from the training kit (jobs/kit/training.py).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from jobs.kit.optim import LrSchedule, make_optimizer, set_lr, single_group
from jobs.kit.timing import log_phase
from jobs.kit.tracking import Tracker
from jobs.kit.training import all_finite, record_stop, report, restore, worker_generator
from jobs.pretraining.config import PretrainConfig
from ssast import SSAST, SSASTConfig
from ssast.checkpoint import checkpoint_payload

logger = logging.getLogger("pretrain")
LOSS_KEYS = {
    "loss": "train/loss",
    "nce": "train/loss_nce",
    "mse": "train/loss_mse",
    "acc": "train/accuracy",
}
"""The model's outputs -> the reported metric keys."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": PretrainConfig, "model": SSASTConfig
    dict, "mlflow": (uri, run_id), "marker": the non-finite stop marker, "fit_start":
    the driver's time.time() when it started the run, "clips": None (the "train" dataset
    shard) or an ObjectRef of the (N, T, F) model input}."""
    loop_start = time.time()
    import ray.train
    import ray.train.torch

    cfg: PretrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # identical init on every rank
    model = SSAST(SSASTConfig.from_dict(config["model"])).to(device)
    opt = make_optimizer(single_group(model), cfg.optim)
    sched = LrSchedule(cfg.optim, cfg.train.max_steps)
    step = _restore(model, opt, sched)
    gen = worker_generator(cfg.train.seed, rank, step, device)
    ddp = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    tracker = Tracker(*config["mlflow"]) if rank == 0 else None
    if config.get("clips") is not None:
        batches = _memory_batches(ray.get(config["clips"]), cfg, rank, world)
    else:
        batches = _batches(ray.train.get_dataset_shard("train"), cfg)
    use_bf16 = cfg.train.bf16 and device.type == "cuda"
    if rank == 0:
        logger.info(
            "start at step %d of %d, %d worker(s) on %s", step, cfg.train.max_steps, world, device
        )
        if step:
            tracker.log({"train/resumed_from_step": step}, step)
        # From the driver's fit() to here: controller, worker group, process group.
        startup = {"time/worker_start_s": loop_start - config.get("fit_start", loop_start)}
    first_step = step + 1

    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    interval_start, wait, steps_in_interval = time.perf_counter(), 0.0, 0
    while step < cfg.train.max_steps:
        lr = sched.lr(step)
        set_lr(opt, lr)
        for micro in range(cfg.optim.accumulate):
            t = time.perf_counter()
            x = next(batches)["fbank"].to(device, non_blocking=True)
            wait += time.perf_counter() - t
            sync = (
                nullcontext() if micro == cfg.optim.accumulate - 1 or world == 1 else ddp.no_sync()
            )
            amp = torch.autocast("cuda", torch.bfloat16) if use_bf16 else nullcontext()
            with sync, amp:
                out = ddp(x, two_pass=cfg.model.two_pass, generator=gen)
                (out["loss"] / cfg.optim.accumulate).backward()
            for k in LOSS_KEYS:
                sums[k] += float(out[k].detach()) / cfg.optim.accumulate
        if not all_finite(out["loss"], world):
            record_stop(config["marker"], step + 1, lr, rank)
            return
        if cfg.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        steps_in_interval += 1
        if step == first_step and rank == 0:
            # Model build, the data stream's start and the first step.
            first_done = time.time()
            startup["time/first_step_s"] = first_done - loop_start
            for k, v in startup.items():
                log_phase(k.removeprefix("time/").removesuffix("_s"), v)
            tracker.log(startup, step)
        elif step == cfg.train.max_steps and rank == 0:
            # The training itself: what is left of a run's wall time is fixed cost.
            later = time.time() - first_done
            log_phase("later_steps", later)
            tracker.log({"time/later_steps_s": later}, step)
        if step % cfg.train.log_every and step != cfg.train.max_steps:
            continue
        elapsed = time.perf_counter() - interval_start
        metrics = _interval_metrics(sums, steps_in_interval, world, device)
        metrics.update(
            {
                "train/lr": lr,
                "step": step,
                "perf/samples_per_s": world
                * cfg.train.batch_size
                * cfg.optim.accumulate
                * steps_in_interval
                / elapsed,
                "perf/ms_per_step": 1e3 * elapsed / steps_in_interval,
                "perf/data_wait_fraction": wait / elapsed,
            }
        )
        sched.observe(metrics["train/accuracy"])
        if rank == 0:
            _log_interval(tracker, metrics, step, steps_in_interval, cfg, model, x, gen)
        due = (
            passed_multiple(step, steps_in_interval, cfg.train.checkpoint_every)
            or step == cfg.train.max_steps
        )
        state = (lambda s=step: _state(model, opt, sched, s, cfg)) if due else None
        report(metrics, rank, state, f"step_{step:08d}")
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        interval_start, wait, steps_in_interval = time.perf_counter(), 0.0, 0


def _batches(shard, cfg: PretrainConfig):
    """Endless stream of {"fbank": (B, T, F)} batches over repeated epochs of the shard."""
    epoch = 0
    while True:
        got = False
        for batch in shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            dtypes=torch.float32,
            drop_last=True,
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


def _memory_batches(clips: np.ndarray, cfg: PretrainConfig, rank: int, world: int):
    """Endless stream of {"fbank": (B, T, F)} batches of in-memory clips (N, T, F): each
    pass a fresh permutation (the same on every rank: seeded by train.seed and the pass),
    this rank's equal share of it (every world-th clip), whole batches only."""
    B = cfg.train.batch_size
    share = len(clips) // world
    if share < B:
        raise ValueError(
            f"a worker's share of the data has {share} rows, fewer than train.batch_size="
            f"{B}; use a smaller batch or fewer workers"
        )
    epoch = 0
    while True:
        order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(clips))
        mine = order[rank::world][:share]
        for k in range(0, share - B + 1, B):
            yield {"fbank": torch.from_numpy(clips[mine[k : k + B]])}
        epoch += 1


def _interval_metrics(sums: dict[str, float], steps: int, world: int, device) -> dict:
    """Mean of the interval's losses over steps and ranks, under the reported keys."""
    values = torch.tensor([sums[k] / steps for k in LOSS_KEYS], device=device)
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return dict(zip(LOSS_KEYS.values(), values.tolist(), strict=True))


def _log_interval(
    tracker: Tracker,
    metrics: dict,
    step: int,
    steps_in_interval: int,
    cfg: PretrainConfig,
    model: SSAST,
    x: torch.Tensor,
    gen: torch.Generator,
) -> None:
    """Rank 0: the compact log line, MLflow metrics and, when the interval passed a
    multiple of train.image_every, a picture."""
    logger.info(
        "step %6d  loss %.4f  nce %.4f  mse %.4f  acc %.3f  lr %.2e  %5.0f ms/step"
        "  %6.2f samples/s  wait %.1f%%",
        step,
        *(
            metrics[k]
            for k in (
                "train/loss",
                "train/loss_nce",
                "train/loss_mse",
                "train/accuracy",
                "train/lr",
                "perf/ms_per_step",
                "perf/samples_per_s",
            )
        ),
        100 * metrics["perf/data_wait_fraction"],
    )
    tracker.log(metrics, step)
    if passed_multiple(step, steps_in_interval, cfg.train.image_every):
        from jobs.kit.pictures import mask_figure

        tracker.figure(mask_figure(model, x[:1], gen), f"pictures/step_{step:08d}.png")


def passed_multiple(step: int, steps_in_interval: int, every: int) -> bool:
    """Whether the interval of steps (step - steps_in_interval, step] holds a multiple of
    ``every`` (0: never). A short last interval or a run shorter than one interval holds
    none unless it reaches one."""
    return every > 0 and step // every > (step - steps_in_interval) // every


def _state(model: SSAST, opt, sched: LrSchedule, step: int, cfg: PretrainConfig) -> dict:
    """Everything a resume needs, in our checkpoint format (loadable by load_checkpoint)."""
    from jobs.kit.config import to_dict

    return checkpoint_payload(
        model,
        extra={
            "optimizer": opt.state_dict(),
            "schedule": sched.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "run_config": to_dict(cfg),
        },
    )


def _restore(model: SSAST, opt, sched: LrSchedule) -> int:
    """Load the latest checkpoint of this run, if any; returns the step to continue from."""
    state = restore()
    if state is None:
        return 0
    model.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    logger.info("resumed from step %d", state["step"])
    return int(state["step"])
