"""One run of the evaluation suite (a Ray task): a task's features, a method, an encoder
and a seed in; valid and test accuracy out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jobs.evaluation.probes import LabelledSet, pooled_fbank
from jobs.kit.models import encoder_of
from pipeline.batches import ModelInput


def run_one(
    spec: dict[str, Any], data: LabelledSet, payload: dict | None, template: dict | None
) -> dict[str, Any]:
    """``spec``: task, method, encoder, seed, input_tdim, scratch_size, normalization,
    batch_size, threads. ``payload``: the encoder's checkpoint (None: scratch, with the
    architecture of ``template``, another encoder's checkpoint, or of scratch_size)."""
    torch.set_num_threads(spec["threads"])
    if spec["method"] == "baseline":
        x = pooled_fbank(data.rows)
    else:
        model = _encoder(spec, payload, template, data.num_mel_bins)
        x = embed(
            model,
            data.rows,
            ModelInput(spec["input_tdim"], spec["normalization"]),
            spec["batch_size"],
        )
    out = {k: spec[k] for k in ("task", "method", "encoder", "seed", "input_tdim")}
    return out | data.fit(x) | {"num_classes": data.num_classes}


def _encoder(spec: dict, payload: dict | None, template: dict | None, F: int):
    """The frozen encoder at the task's length: a trained one adapted (positions cropped
    or resized as the original does), or random weights seeded by the run's seed."""
    from ssast import SSAST, SSASTConfig, load_checkpoint

    T = spec["input_tdim"]
    if payload is not None:
        base = encoder_of(load_checkpoint(payload), spec["encoder"])
        return base.adapted(input_tdim=T, input_fdim=F).eval()
    torch.manual_seed(spec["seed"])
    if template is not None:
        cfg = load_checkpoint(template).cfg
        cfg = cfg.replace(input_tdim=T, input_fdim=F, patch_stride=cfg.patch_shape, num_masked=1)
    else:
        cfg = SSASTConfig(size=spec["scratch_size"], input_tdim=T, input_fdim=F, num_masked=1)
    return SSAST(cfg).eval()


@torch.no_grad()
def embed(model, rows, spec: ModelInput, batch_size: int) -> np.ndarray:
    """(N, D) clip embeddings: the mean of the final patch tokens."""
    out = []
    for k in range(0, rows.num_rows, batch_size):
        x = torch.from_numpy(spec.prepare(rows.slice(k, batch_size))["fbank"])
        out.append(model.encode(x).mean(dim=1).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.preset.embed_dim))
