"""One run of the evaluation suite (a Ray task): a task's features, a method, an encoder
and a seed in; valid and test accuracy out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jobs.evaluation.probes import accuracy, pooled_fbank, select_and_fit
from jobs.kit.datasets import read_rows
from pipeline.batches import MODEL_INPUT_COLUMNS, ModelInput, auto_target_frames
from pipeline.labels import class_names
from pipeline.schema import load_dataset_info

SPLITS = ("train", "valid", "test")


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec``: task, data (featurized dir), method, encoder, seed, payload (None for
    scratch), template (a payload giving scratch its architecture, or None),
    scratch_size, input_tdim (None: auto), normalization, batch_size, threads."""
    torch.set_num_threads(spec["threads"])
    info = load_dataset_info(spec["data"])
    rows = read_rows(info.features_dir, [*MODEL_INPUT_COLUMNS, "label", "split"])
    names = class_names(rows.column("label").to_pylist(), False, ",")
    index = {n: k for k, n in enumerate(names)}
    y = np.array([index[v] for v in rows.column("label").to_pylist()])
    split = np.array(rows.column("split").to_pylist())
    T = spec["input_tdim"] or auto_target_frames(rows.column("num_frames").to_numpy())
    if spec["method"] == "baseline":
        x = pooled_fbank(rows)
    else:
        model = _encoder(spec, T, info.feature_config.num_mel_bins)
        x = embed(model, rows, ModelInput(T, spec["normalization"]), spec["batch_size"])
    parts = {s: (x[split == s], y[split == s]) for s in SPLITS}
    for s in ("train", "valid", "test"):
        if len(parts[s][1]) == 0:
            raise ValueError(f"task {spec['task']}: {spec['data']} has no {s!r} rows")
    probe = select_and_fit(parts["train"], parts["valid"], len(names))
    out = {k: spec[k] for k in ("task", "method", "encoder", "seed")}
    return out | {
        "valid/accuracy": accuracy(probe.scores(parts["valid"][0]), parts["valid"][1]),
        "test/accuracy": accuracy(probe.scores(parts["test"][0]), parts["test"][1]),
        "l2": probe.l2,
        "input_tdim": T,
        "num_classes": len(names),
    }


def _encoder(spec: dict, T: int, F: int):
    """The frozen encoder at the task's length: a trained one adapted (positions cropped
    or resized as the original does), or random weights seeded by the run's seed."""
    from ssast import SSAST, SSASTConfig, load_checkpoint

    if spec["payload"] is not None:
        from jobs.kit.models import ModelFile, encoder_of

        model = load_checkpoint(spec["payload"])
        base = encoder_of(ModelFile("encoder", spec["payload"], model, None, None, None))
        return base.adapted(input_tdim=T, input_fdim=F).eval()
    torch.manual_seed(spec["seed"])
    if spec["template"] is not None:
        cfg = load_checkpoint(spec["template"]).cfg
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
