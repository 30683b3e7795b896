"""Optimizer and learning-rate schedule of both training jobs.

Parameters come in groups with an ``lr_scale`` (fine-tuning's layer-wise decay and head
multiplier; one group of scale 1 for pretraining); every step sets each group's lr to
``schedule.lr(step) * lr_scale``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from jobs.kit.config import OptimSection


def make_optimizer(groups: list[dict[str, Any]], cfg: OptimSection) -> torch.optim.Optimizer:
    """Adam (coupled L2, the paper) or AdamW over parameter groups with an ``lr_scale``."""
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def single_group(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Every trainable parameter at the base learning rate."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class LrSchedule:
    """Learning rate at optimizer step ``step`` (0-based): a linear warm-up times the
    schedule's value.

    cosine: min_lr + (lr - min_lr) (1 + cos(pi p)) / 2, p the progress through the steps
    after warm-up; constant: lr; multistep (per epoch, the original fine-tuning's
    MultiStepLR): lr x decay_factor^n, n the decays since epoch decay_start; plateau (the
    paper's pretraining): lr halved after plateau_patience intervals without a better
    masked-patch accuracy (:meth:`observe`).
    """

    def __init__(self, cfg: OptimSection, total_steps: int) -> None:
        self.cfg, self.total_steps = cfg, total_steps
        self.scale, self.best, self.bad = 1.0, -math.inf, 0

    def lr(self, step: int, epoch: int = 1) -> float:
        """``epoch`` (1-based) matters to multistep only."""
        c = self.cfg
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        if c.schedule == "cosine":
            span = max(1, self.total_steps - c.warmup_steps)
            progress = min(1.0, max(0, step - c.warmup_steps) / span)
            peak = c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))
        elif c.schedule == "multistep":
            n = 0 if epoch <= c.decay_start else (epoch - 1 - c.decay_start) // c.decay_every + 1
            peak = c.lr * c.decay_factor**n
        else:  # constant, plateau
            peak = c.lr * self.scale
        return warm * peak

    def observe(self, accuracy: float) -> None:
        """Feed an interval's accuracy (plateau only)."""
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
