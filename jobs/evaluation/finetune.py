"""The benchmark's fine-tuning method: a fine-tuning job's recipe, run in one process on
a task held in memory.

Same model, optimizer groups (layer-wise decay, head multiplier), schedule, augmentation
and loss as ``jobs/finetune.py`` (jobs/finetuning/worker.py), without Ray Train: a suite
task is a few hundred clips, and one process per run lets the benchmark run many
(task x encoder x seed) at once. Model selection: the epoch of the best valid accuracy.

Shapes: N clips, T frames, F mel bins, K classes.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pyarrow as pa
import torch

from jobs.evaluation.probes import SPLITS, LabelledSet, accuracy
from jobs.finetuning.config import FinetuneConfig
from jobs.finetuning.worker import augment, loss_fn, param_groups, steps_per_epoch
from jobs.kit.optim import LrSchedule, make_optimizer, set_lr
from pipeline.batches import ModelInput
from ssast import SSASTClassifier

logger = logging.getLogger("benchmark")


def finetune_on(
    model: SSASTClassifier, data: LabelledSet, spec: ModelInput, cfg: FinetuneConfig, seed: int
) -> dict[str, float]:
    """Train ``model`` (in place) on the train split with ``cfg``'s recipe; score the
    epoch of the best valid accuracy on valid and test: {valid/accuracy, test/accuracy,
    best_epoch, train_s}."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = {
        s: torch.from_numpy(spec.prepare(data.rows.filter(pa.array(data.split == s)))["fbank"])
        for s in SPLITS
    }
    y = {s: torch.from_numpy(data.y[data.split == s]) for s in SPLITS}
    K = data.num_classes
    if cfg.train.linear_probe:
        model.encoder.requires_grad_(False)
    opt = make_optimizer(param_groups(model, cfg.optim), cfg.optim)
    B, N = cfg.train.batch_size, len(y["train"])
    sched = LrSchedule(cfg.optim, steps_per_epoch(N, 1, B, 1) * cfg.train.max_epochs)
    step, best, best_state, best_epoch = 0, -1.0, None, 0
    for epoch in range(1, cfg.train.max_epochs + 1):
        model.train()
        order = torch.randperm(N, generator=gen)
        for k in range(0, N, B):
            idx = order[k : k + B]
            target = torch.nn.functional.one_hot(y["train"][idx], K).float()
            xb, target = augment(x["train"][idx], target, cfg, spec.normalization.fill, gen)
            loss = loss_fn("ce", model(xb), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}")
            set_lr(opt, sched.lr(step, epoch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
            opt.step()
            step += 1
        valid = accuracy(_scores(model, x["valid"], cfg.train.eval_batch_size), y["valid"].numpy())
        logger.debug(
            "epoch %d: loss %.3f, valid accuracy %.3f, %.0f s",
            epoch,
            float(loss.detach()),
            valid,
            time.perf_counter() - start,
        )
        if valid > best:
            best, best_epoch = valid, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = accuracy(_scores(model, x["test"], cfg.train.eval_batch_size), y["test"].numpy())
    return {
        "valid/accuracy": best,
        "test/accuracy": test,
        "best_epoch": best_epoch,
        "train_s": time.perf_counter() - start,
    }


@torch.no_grad()
def _scores(model: SSASTClassifier, x: torch.Tensor, batch_size: int) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[k : k + batch_size]) for k in range(0, len(x), batch_size)]).numpy()
