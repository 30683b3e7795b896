"""One run of the evaluation suite (a Ray task): a task's features, a method, an encoder
and a seed in; valid and test accuracy out (one row per probed layer)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from jobs.evaluation.probes import LabelledSet, pooled_fbank
from jobs.kit.models import encoder_of
from pipeline.batches import ModelInput


def run_one(
    spec: dict[str, Any], data: LabelledSet, payload: dict | None, template: dict | None
) -> list[dict[str, Any]]:
    """``spec``: task, method, encoder (its column), member (its reference), seed,
    input_tdim, scratch_size, normalization, batch_size, threads, layers ("last" or
    "all"), recipe (a FinetuneConfig, finetune).
    ``payload``: the encoder's checkpoint (None: scratch, with the architecture of
    ``template``, another encoder's checkpoint, or of scratch_size)."""
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    rows = _run(spec, data, payload, template)
    seconds = round(time.perf_counter() - start, 1)
    return [r | {"seconds": seconds} for r in rows]  # per run (a probe's layers share it)


def _run(spec, data, payload, template) -> list[dict[str, Any]]:
    out = {k: spec[k] for k in ("task", "method", "encoder", "member", "seed", "input_tdim")}
    out["num_classes"] = data.num_classes
    if spec["method"] == "baseline":
        return [out | data.fit(pooled_fbank(data.rows))]
    model = _encoder(spec, payload, template, data.num_mel_bins)
    given = ModelInput(spec["input_tdim"], spec["normalization"])
    if spec["method"] == "finetune":
        return [out | finetune(model, data, given, spec)]
    layers = embed(model, data.rows, given, spec["batch_size"], spec["layers"] == "all")
    rows = [out | data.fit(layers[-1])]
    if spec["layers"] == "all":
        rows += [out | {"method": f"probe@{k + 1}"} | data.fit(x) for k, x in enumerate(layers)]
    return rows


def finetune(model, data: LabelledSet, given: ModelInput, spec: dict) -> dict[str, float]:
    """The recipe's classifier on ``model``'s encoder, trained on the task."""
    from jobs.evaluation.finetune import finetune_on
    from ssast import SSASTClassifier

    recipe = spec["recipe"].with_init_defaults()
    m = recipe.model
    if m.patch_stride and tuple(m.patch_stride) != model.cfg.patch_stride:
        model = model.adapted(patch_stride=m.patch_stride)
    torch.manual_seed(spec["seed"])
    clf = SSASTClassifier.from_pretrained(model, data.num_classes, m.pooling, m.adapter_config())
    return finetune_on(clf, data, given, recipe, spec["seed"])


def _encoder(spec: dict, payload: dict | None, template: dict | None, F: int):
    """The encoder at the task's length: a trained one adapted (positions cropped or
    resized as the original does), or random weights seeded by the run's seed."""
    from ssast import SSAST, SSASTConfig, load_checkpoint

    T = spec["input_tdim"]
    if payload is not None:
        base = encoder_of(load_checkpoint(payload), spec["member"])
        return base.adapted(input_tdim=T, input_fdim=F).eval()
    torch.manual_seed(spec["seed"])
    if template is not None:
        cfg = load_checkpoint(template).cfg
        cfg = cfg.replace(input_tdim=T, input_fdim=F, patch_stride=cfg.patch_shape, num_masked=1)
    else:
        cfg = SSASTConfig(size=spec["scratch_size"], input_tdim=T, input_fdim=F, num_masked=1)
    return SSAST(cfg).eval()


@torch.no_grad()
def embed(model, rows, spec: ModelInput, batch_size: int, every_layer: bool = False):
    """[(N, D)] clip embeddings, the mean of the patch tokens: of the final output, or
    of every block's output (the last one after the final LayerNorm)."""
    C = model.encoder.num_extra_tokens
    out: list[list[np.ndarray]] = []
    for k in range(0, rows.num_rows, batch_size):
        x = torch.from_numpy(spec.prepare(rows.slice(k, batch_size))["fbank"])
        model._check_input(x)
        layers = model.encoder.layer_outputs(x) if every_layer else [model.encoder(x)]
        out.append([h[:, C:].mean(dim=1).double().numpy() for h in layers])
    if not out:
        return [np.zeros((0, model.cfg.preset.embed_dim))]
    return [np.concatenate(parts) for parts in zip(*out, strict=True)]
