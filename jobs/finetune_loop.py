"""The Ray Train per-worker loop of fine-tuning.

One ``ray.train.report`` per epoch on every rank (rank 0 attaches the epoch checkpoint),
so Ray Tune's ASHA sees one training iteration per epoch. Every rank scores the whole
valid split, so all ranks take the same early-stopping decision.

The checkpoint (``state.pt``) is our classifier checkpoint plus what a resume and the
final selection need: optimizer, epoch, step, history, the best epoch's weights and the
running weight average.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf

from jobs.finetune_config import FinetuneConfig, FtOptimSection
from jobs.metrics import summary
from pipeline.config import build
from ssast import SSASTClassifier, load_checkpoint
from ssast.augment import add_noise, mixup, spec_augment
from ssast.checkpoint import checkpoint_payload

logger = logging.getLogger("finetune")
STATE_FILE = "state.pt"


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


def lr_factor(cfg: FtOptimSection, step: int, epoch: int, total_steps: int) -> float:
    """Multiplier of optim.lr at optimizer step ``step`` (0-based) of epoch ``epoch``
    (1-based): linear warm-up times the schedule."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "multistep":  # torch MultiStepLR(range(start, 1000, every)), per epoch
        n = 0 if epoch <= cfg.decay_start else (epoch - 1 - cfg.decay_start) // cfg.decay_every + 1
        return warm * cfg.decay_factor**n
    if cfg.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))
    return warm


def loss_fn(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ce: cross-entropy against the (possibly mixed) target distribution; bce: logits BCE."""
    if kind == "ce":
        return nnf.cross_entropy(logits, target)
    return nnf.binary_cross_entropy_with_logits(logits, target)


def augment(x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig, fill: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecAugment, mixup and noise on a normalised training batch (see ssast.augment)."""
    a = cfg.augment
    if a.freq_mask or a.time_mask:
        x = spec_augment(x, a.freq_mask, a.time_mask, fill=fill, generator=gen)
    x, y = mixup(x, y, a.mixup, a.mixup_alpha, generator=gen)
    if a.noise:
        x = add_noise(x, generator=gen)
    return x, y


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": FinetuneConfig dict, "init": ObjectRef of
    the initial classifier checkpoint payload, "task": {"loss", "metric", "fill",
    "train_rows"}, "mlflow": {"uri", "run_id"}}."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = build(FinetuneConfig, config["cfg"])
    task = config["task"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    model = load_checkpoint(ray.get(config["init"])).to(device)
    if cfg.train.linear_probe:
        model.encoder.requires_grad_(False)
    kind = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    opt = kind(param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas,
               weight_decay=cfg.optim.weight_decay)
    state = _restore(model, opt)
    gen = torch.Generator(device=device).manual_seed(
        cfg.train.seed * 7919 + rank * 104729 + state["epoch"])
    ddp = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    tracker = _Tracker(config["mlflow"]) if rank == 0 and config.get("mlflow") else None
    steps_per_epoch = -(-task["train_rows"] // (world * cfg.train.batch_size
                                                * cfg.optim.accumulate))
    total_steps = steps_per_epoch * cfg.train.max_epochs
    metric = f"valid/{task['metric']}"
    while state["epoch"] < cfg.train.max_epochs and not _stopped(state, cfg):
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        train = _train_epoch(ddp, opt, cfg, task, state, epoch, total_steps, gen, device, world)
        train_s = time.perf_counter() - start
        scores, targets = _validate(model, ray.train.get_dataset_shard("valid"), cfg, device)
        valid = summary(scores, targets, "valid")
        valid["valid/loss"] = float(loss_fn(task["loss"], torch.from_numpy(scores),
                                            torch.from_numpy(targets)))
        elapsed = time.perf_counter() - start
        samples = train.pop("_samples")
        metrics = {**train, **valid, "epoch": epoch,
                   "perf/samples_per_s": samples * world / elapsed,  # with validation
                   "perf/train_samples_per_s": samples * world / train_s}
        _update_selection(state, model, cfg, epoch, metrics[metric])
        metrics[f"best/{metric}"] = state["best_metric"]
        state["epoch"] = epoch
        state["history"].append(metrics)
        if rank == 0:
            logger.info("epoch %3d  loss %.4f  %s %.4f (best %.4f @ %d)  lr %.2e  %.1f samples/s",
                        epoch, metrics["train/loss"], metric, metrics[metric],
                        state["best_metric"], state["best_epoch"], metrics["train/lr"],
                        metrics["perf/samples_per_s"])
            if tracker:
                tracker.log(metrics, epoch)
        _report(metrics, model, opt, state, rank)


def _train_epoch(ddp, opt, cfg: FinetuneConfig, task: dict, state: dict, epoch: int,
                 total_steps: int, gen: torch.Generator, device, world: int) -> dict:
    import ray.train

    ddp.train()
    use_bf16 = cfg.train.bf16 and device.type == "cuda"
    shard = ray.train.get_dataset_shard("train")
    total, count, samples, lr = 0.0, 0, 0, cfg.optim.lr
    batches = shard.iter_torch_batches(
        batch_size=cfg.train.batch_size, dtypes=torch.float32,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        local_shuffle_seed=cfg.train.seed + epoch if cfg.data.shuffle_buffer else None)
    for i, batch in enumerate(batches):
        x, y = batch["fbank"].to(device), batch["target"].to(device)
        x, y = augment(x, y, cfg, task["fill"], gen)
        last = (i + 1) % cfg.optim.accumulate == 0
        sync = nullcontext() if last or world == 1 else ddp.no_sync()
        amp = torch.autocast("cuda", torch.bfloat16) if use_bf16 else nullcontext()
        with sync, amp:
            loss = loss_fn(task["loss"], ddp(x).float(), y)
            (loss / cfg.optim.accumulate).backward()
        total, count, samples = total + float(loss.detach()), count + 1, samples + len(x)
        if not last:
            continue
        lr = cfg.optim.lr * lr_factor(cfg.optim, state["step"], epoch, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        if cfg.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
    if count == 0:
        raise ValueError("a worker's training shard is empty: fewer training rows than "
                         "workers; use fewer workers")
    if not math.isfinite(total):
        raise FloatingPointError(f"non-finite training loss in epoch {epoch} (lr {lr:.3g}); "
                                 "lower optim.lr or set optim.grad_clip_norm")
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
    return (np.concatenate(scores) if scores else np.zeros((0, K), np.float32),
            np.concatenate(targets) if targets else np.zeros((0, K), np.float32))


def _validate(model, shard, cfg: FinetuneConfig, device) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the whole valid split (not split across ranks: every rank scores all of it
    and so takes the same early-stopping decision, with no rows dropped by an equal split)."""
    batches = shard.iter_torch_batches(batch_size=cfg.train.eval_batch_size,
                                       dtypes=torch.float32)
    return predict_batches(model, batches, device)


def _update_selection(state: dict, model, cfg: FinetuneConfig, epoch: int, value: float) -> None:
    """Best-epoch weights, patience counter and running weight average."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if value > state["best_metric"]:
        state.update(best_metric=value, best_epoch=epoch, best_state_dict=weights,
                     bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    start = cfg.train.average_from_epoch
    if start is not None and epoch >= start:
        n = state["avg_count"]
        avg = state["avg_state_dict"] or {k: torch.zeros_like(v, dtype=torch.float32)
                                          for k, v in weights.items()}
        for k, v in weights.items():
            avg[k] += (v.float() - avg[k]) / (n + 1)  # running mean of epochs start..epoch
        state.update(avg_state_dict=avg, avg_count=n + 1)


def _stopped(state: dict, cfg: FinetuneConfig) -> bool:
    patience = cfg.train.early_stop_patience
    return patience is not None and state["bad_epochs"] >= patience


def _report(metrics: dict, model, opt, state: dict, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            payload = checkpoint_payload(model, extra={"optimizer": opt.state_dict(), **state,
                                                       "torch_rng": torch.get_rng_state()})
            torch.save(payload, os.path.join(tmp, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=f"epoch_{state['epoch']:04d}" if checkpoint else None)


def _restore(model, opt) -> dict:
    """The loop state of the latest checkpoint of this run, or a fresh one."""
    import ray.train

    fresh = {"epoch": 0, "step": 0, "best_metric": -math.inf, "best_epoch": 0,
             "best_state_dict": None, "bad_epochs": 0, "avg_state_dict": None,
             "avg_count": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return fresh
    with checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"])
    opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    logger.info("resumed after epoch %d", saved["epoch"])
    return {k: saved[k] for k in fresh}


class _Tracker:
    """Rank 0's MLflow logging into the run the driver created."""

    def __init__(self, settings: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tracking_uri(settings["uri"])
        self.entities, self.run_id = mlflow.entities, settings["run_id"]
        self.client = mlflow.MlflowClient()

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            self.entities.Metric(k, float(v), now, step) for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(v)])
