"""The Ray Train per-worker loop of fine-tuning.

One ``report`` per epoch on every rank (rank 0 attaches the epoch checkpoint), so Ray
Tune's ASHA sees one training iteration per epoch. Every rank scores the whole valid
split, so all ranks take the same early-stopping decision. Seeds, the non-finite stop,
checkpoints and MLflow logging come from the training kit (jobs/kit/training.py).

The checkpoint (``state.pt``) is our classifier checkpoint plus what a resume and the
final selection need: optimizer, epoch, step, history, the best epoch's weights and the
running weight average.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf

from jobs.finetuning.config import FinetuneConfig, FtOptimSection
from jobs.finetuning.task import Task
from jobs.kit.metrics import summary
from jobs.kit.optim import LrSchedule, make_optimizer, set_lr
from jobs.kit.tracking import Tracker
from jobs.kit.training import all_finite, record_stop, report, restore, worker_generator
from ssast import SSASTClassifier, load_checkpoint
from ssast.augment import add_noise, mixup, spec_augment
from ssast.checkpoint import checkpoint_payload

logger = logging.getLogger("finetune")


def param_groups(model: SSASTClassifier, cfg: FtOptimSection) -> list[dict[str, Any]]:
    """Parameter groups with an ``lr_scale``: layer-wise decay and the head multiplier.

    Block i of L gets decay^(L - i), the final norm 1, the embeddings (patch projection,
    cls/dist tokens, positions) decay^(L + 1), the head ``head_lr_mult``.
    """
    L = len(model.encoder.blocks)
    scales: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            scale = cfg.head_lr_mult
        elif name.startswith("encoder.blocks."):
            scale = cfg.layer_decay ** (L - int(name.split(".")[2]))
        elif name.startswith("encoder.norm."):
            scale = 1.0
        else:
            scale = cfg.layer_decay ** (L + 1)
        scales.setdefault(scale, []).append(p)
    return [{"params": ps, "lr_scale": s} for s, ps in sorted(scales.items())]


def steps_per_epoch(train_rows: int, world: int, batch_size: int, accumulate: int) -> int:
    """Optimizer steps of one epoch on each worker (the last batch may be short)."""
    return -(-train_rows // (world * batch_size * accumulate))


def loss_fn(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ce: cross-entropy against the (possibly mixed) target distribution; bce: logits BCE."""
    if kind == "ce":
        return nnf.cross_entropy(logits, target)
    return nnf.binary_cross_entropy_with_logits(logits, target)


def augment(
    x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig, fill: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecAugment, mixup and noise on a normalised training batch (see ssast.augment)."""
    a = cfg.augment
    if a.freq_mask or a.time_mask:
        x = spec_augment(x, a.freq_mask, a.time_mask, fill=fill, generator=gen)
    x, y = mixup(x, y, a.mixup, a.mixup_alpha, generator=gen)
    if a.noise:
        x = add_noise(x, generator=gen)
    return x, y


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": FinetuneConfig, "task": Task, "init":
    ObjectRef of the initial classifier checkpoint payload, "mlflow": (uri, run_id),
    "marker": the non-finite stop marker}."""
    import ray
    import ray.train
    import ray.train.torch

    cfg: FinetuneConfig = config["cfg"]
    task: Task = config["task"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    model = load_checkpoint(ray.get(config["init"])).to(device)
    if cfg.train.linear_probe:
        model.encoder.requires_grad_(False)
    opt = make_optimizer(param_groups(model, cfg.optim), cfg.optim)
    per_epoch = steps_per_epoch(task.train_rows, world, cfg.train.batch_size, cfg.optim.accumulate)
    sched = LrSchedule(cfg.optim, per_epoch * cfg.train.max_epochs)
    state = _restore(model, opt)
    gen = worker_generator(cfg.train.seed, rank, state["epoch"], device)
    ddp = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    tracker = Tracker(*config["mlflow"]) if rank == 0 and config.get("mlflow") else None
    metric = f"valid/{task.metric}"
    while state["epoch"] < cfg.train.max_epochs and not _stopped(state, cfg):
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        train = _train_epoch(ddp, opt, sched, cfg, task, state, epoch, gen, device, world)
        if train is None:  # a non-finite loss: every rank stops here, nothing is saved
            record_stop(config["marker"], state["step"] + 1, sched.lr(state["step"], epoch), rank)
            return
        train_s = time.perf_counter() - start
        scores, targets = _validate(model, ray.train.get_dataset_shard("valid"), cfg, device)
        valid = summary(scores, targets, "valid")
        valid["valid/loss"] = float(
            loss_fn(task.loss, torch.from_numpy(scores), torch.from_numpy(targets))
        )
        elapsed = time.perf_counter() - start
        samples = train.pop("_samples")
        metrics = {
            **train,
            **valid,
            "epoch": epoch,
            "perf/samples_per_s": samples * world / elapsed,  # with validation
            "perf/train_samples_per_s": samples * world / train_s,
        }
        _update_selection(state, model, cfg, epoch, metrics[metric])
        metrics[f"best/{metric}"] = state["best_metric"]
        state["epoch"] = epoch
        state["history"].append(metrics)
        if rank == 0:
            logger.info(
                "epoch %3d  loss %.4f  %s %.4f (best %.4f @ %d)  lr %.2e  %.1f samples/s",
                epoch,
                metrics["train/loss"],
                metric,
                metrics[metric],
                state["best_metric"],
                state["best_epoch"],
                metrics["train/lr"],
                metrics["perf/samples_per_s"],
            )
            if tracker:
                tracker.log(metrics, epoch)
        report(metrics, rank, lambda: _state(model, opt, state), f"epoch_{epoch:04d}")


def _train_epoch(
    ddp,
    opt,
    sched: LrSchedule,
    cfg: FinetuneConfig,
    task: Task,
    state: dict,
    epoch: int,
    gen: torch.Generator,
    device,
    world: int,
) -> dict | None:
    """One pass over the worker's training shard; None when the loss became non-finite."""
    import ray.train

    ddp.train()
    use_bf16 = cfg.train.bf16 and device.type == "cuda"
    shard = ray.train.get_dataset_shard("train")
    total, count, samples, lr = 0.0, 0, 0, cfg.optim.lr
    fill = task.normalization.fill
    batches = shard.iter_torch_batches(
        batch_size=cfg.train.batch_size,
        dtypes=torch.float32,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        local_shuffle_seed=cfg.train.seed + epoch if cfg.data.shuffle_buffer else None,
    )
    for i, batch in enumerate(batches):
        x, y = batch["fbank"].to(device), batch["target"].to(device)
        x, y = augment(x, y, cfg, fill, gen)
        last = (i + 1) % cfg.optim.accumulate == 0
        sync = nullcontext() if last or world == 1 else ddp.no_sync()
        amp = torch.autocast("cuda", torch.bfloat16) if use_bf16 else nullcontext()
        with sync, amp:
            loss = loss_fn(task.loss, ddp(x).float(), y)
            (loss / cfg.optim.accumulate).backward()
        total, count, samples = total + float(loss.detach()), count + 1, samples + len(x)
        if not last:
            continue
        if not all_finite(loss, world):
            return None
        lr = sched.lr(state["step"], epoch)
        set_lr(opt, lr)
        if cfg.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
    if count == 0:
        raise ValueError(
            "a worker's training shard is empty: fewer training rows than "
            "workers; use fewer workers"
        )
    return {"train/loss": total / count, "train/lr": lr, "_samples": samples}


def predict_batches(model: SSASTClassifier, batches, device) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K), targets (N, K)) over an iterable of {"fbank", "target"} batches."""
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for batch in batches:
            scores.append(model(batch["fbank"].to(device)).float().cpu().numpy())
            targets.append(batch["target"].numpy())
    K = model.num_classes
    return (
        np.concatenate(scores) if scores else np.zeros((0, K), np.float32),
        np.concatenate(targets) if targets else np.zeros((0, K), np.float32),
    )


def _validate(model, shard, cfg: FinetuneConfig, device) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the whole valid split (not split across ranks: every rank scores all of it
    and so takes the same early-stopping decision, with no rows dropped by an equal split)."""
    batches = shard.iter_torch_batches(batch_size=cfg.train.eval_batch_size, dtypes=torch.float32)
    return predict_batches(model, batches, device)


def _update_selection(state: dict, model, cfg: FinetuneConfig, epoch: int, value: float) -> None:
    """Best-epoch weights, patience counter and running weight average."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if value > state["best_metric"]:
        state.update(best_metric=value, best_epoch=epoch, best_state_dict=weights, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    start = cfg.train.average_from_epoch
    if start is not None and epoch >= start:
        n = state["avg_count"]
        avg = state["avg_state_dict"] or {
            k: torch.zeros_like(v, dtype=torch.float32) for k, v in weights.items()
        }
        for k, v in weights.items():
            avg[k] += (v.float() - avg[k]) / (n + 1)  # running mean of epochs start..epoch
        state.update(avg_state_dict=avg, avg_count=n + 1)


def _stopped(state: dict, cfg: FinetuneConfig) -> bool:
    patience = cfg.train.early_stop_patience
    return patience is not None and state["bad_epochs"] >= patience


FRESH = {
    "epoch": 0,
    "step": 0,
    "best_metric": -math.inf,
    "best_epoch": 0,
    "best_state_dict": None,
    "bad_epochs": 0,
    "avg_state_dict": None,
    "avg_count": 0,
    "history": [],
}
"""The loop state at the start of a run."""


def _state(model, opt, state: dict) -> dict:
    return checkpoint_payload(
        model, extra={"optimizer": opt.state_dict(), **state, "torch_rng": torch.get_rng_state()}
    )


def _restore(model, opt) -> dict:
    """The loop state of the latest checkpoint of this run, or a fresh one."""
    saved = restore()
    if saved is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in FRESH.items()}
    model.load_state_dict(saved["state_dict"])
    opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    logger.info("resumed after epoch %d", saved["epoch"])
    return {k: saved[k] for k in FRESH}
