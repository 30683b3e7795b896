"""Exports of a model reference: a Hugging Face ``save_pretrained`` folder (transformers'
AST, :mod:`ssast.hf`) or ONNX graphs (onnxruntime), each with what the model reads.

Both need the optional ``export`` extra (``pip install -e '.[export]'``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from jobs.kit.models import ModelFile, read_model
from pipeline.features import FeatureConfig
from pipeline.normalization import FALLBACK, PRESETS, Normalization
from ssast import SSAST, SSASTClassifier

logger = logging.getLogger(__name__)

Format = Literal["hf", "onnx"]
SUMMARY = "ssast_export.json"
"""What an export wrote and how to feed it, in every output folder."""
HF_FIXED = (
    "frame_length_ms",
    "frame_shift_ms",
    "preemphasis",
    "low_freq_hz",
    "high_freq_hz",
    "remove_dc",
)
"""Feature settings ASTFeatureExtractor fixes at our defaults (kaldi fbank's): only the
sample rate and the mel bins are its parameters."""


@dataclass(frozen=True)
class ExportResult:
    output: str
    files: list[str]
    notes: list[str]


def export_model(ref: str, fmt: Format, output: str) -> ExportResult:
    """Export the model ``ref`` (anything ``predict --model`` takes) to ``output``.

    Raises:
        ValueError: the format cannot express the model (the reason named), or an
            unknown format.
    """
    if fmt not in ("hf", "onnx"):
        raise ValueError(f"--format must be hf or onnx, got {fmt!r}")
    found = read_model(ref)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files, notes = (export_hf if fmt == "hf" else export_onnx)(found, out)
    summary = {
        "source": ref,
        "format": fmt,
        "kind": found.kind,
        "files": files,
        "notes": notes,
        **_inputs(found),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return ExportResult(str(out), [*files, SUMMARY], notes)


def export_hf(found: ModelFile, out: Path) -> tuple[list[str], list[str]]:
    """``save_pretrained`` folder for ``transformers.ASTModel`` /
    ``ASTForAudioClassification`` plus ``preprocessor_config.json`` for
    ``ASTFeatureExtractor``; a ``pooling=mean`` classifier adds ``ssast_head.safetensors``."""
    from safetensors.torch import save_file
    from transformers import ASTFeatureExtractor

    from ssast.hf import head_state, to_hf

    model, notes, files = found.model, [], ["config.json", "model.safetensors"]
    names = list(found.labels.class_names) if found.labels else None
    _check_hf_features(found)
    hf = to_hf(model, names)
    hf.save_pretrained(out)
    if isinstance(model, SSASTClassifier) and model.pooling == "mean":
        save_file(head_state(model), str(out / "ssast_head.safetensors"))
        files.append("ssast_head.safetensors")
        notes.append(
            "pooling=mean classifier: the folder is the encoder (ASTModel); the head is "
            "ssast_head.safetensors: logits = dense(layer_norm(last_hidden_state[:, 2:]"
            ".mean(1), eps=1e-5)) (ASTForAudioClassification pools the cls tokens; "
            "fine-tune with model.pooling=cls for a one-piece export)"
        )
    norm = _normalization(found, notes)
    ASTFeatureExtractor(
        sampling_rate=found.features.sample_rate_hz,
        num_mel_bins=found.features.num_mel_bins,
        max_length=model.cfg.input_tdim,
        mean=norm.mean,
        std=norm.std,
        do_normalize=True,
    ).save_pretrained(out)
    files.append("preprocessor_config.json")
    if norm.clip_mean:
        notes.append(
            "the model subtracts each clip's own mean log-mel per bin (data.clip_mean), "
            "which ASTFeatureExtractor cannot: after it, subtract the mean over the real "
            "frames of each bin, x - x[:, :frames].mean(1, keepdim=True), then zero the "
            "padding (exact for clips of max_length frames)"
        )
    return files, notes


def export_onnx(found: ModelFile, out: Path) -> tuple[list[str], list[str]]:
    """``model.onnx``: a classifier (fbank (batch, T, F) -> logits) or an encoder (fbank ->
    patch tokens (batch, N, D)); the batch axis dynamic."""
    model, notes = found.model, []
    if isinstance(model, SSASTClassifier) and model.adapter.kind == "lora":
        from ssast.hf import lora_merged  # no transformers needed

        model = lora_merged(model)
    graph = OnnxGraph(model).eval()
    T, F = model.cfg.input_tdim, model.cfg.input_fdim
    example = torch.zeros(2, T, F)
    output = "logits" if isinstance(model, SSASTClassifier) else "tokens"
    torch.onnx.export(
        graph,
        (example,),
        str(out / "model.onnx"),
        input_names=["fbank"],
        output_names=[output],
        dynamic_shapes={"fbank": {0: torch.export.Dim("batch")}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    _normalization(found, notes)
    return ["model.onnx"], notes


class OnnxGraph(nn.Module):
    """What the ONNX file computes: a classifier's logits, or an encoder's patch tokens."""

    def __init__(self, model: SSAST | SSASTClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, SSASTClassifier):
            return self.model(fbank)
        return self.model.encode(fbank)


def _check_hf_features(found: ModelFile) -> None:
    ours, default = found.features.to_dict(), FeatureConfig().to_dict()
    differ = [f"features.{k}={ours[k]}" for k in HF_FIXED if ours[k] != default[k]]
    if differ:
        raise ValueError(
            f"model {found.ref} was trained on features ASTFeatureExtractor cannot compute "
            f"({', '.join(differ)}; its only parameters are the sample rate and the mel "
            "bins): export with --format onnx and featurize with our pipeline"
        )


def _normalization(found: ModelFile, notes: list[str]) -> Normalization:
    if found.normalization is not None:
        return found.normalization
    mean, std = PRESETS[FALLBACK]
    notes.append(
        f"the checkpoint carries no feature statistics (a released .pth): the {FALLBACK} "
        f"statistics (mean {mean}, std {std}) of the original recipes are used"
    )
    return Normalization(mean, std)


def _inputs(found: ModelFile) -> dict[str, Any]:
    """What the exported model reads: features, normalization, input shape, labels."""
    cfg = found.model.cfg
    norm = found.normalization or Normalization(*PRESETS[FALLBACK])
    return {
        "input": {"frames": cfg.input_tdim, "mel_bins": cfg.input_fdim},
        "features": found.features.to_dict(),
        "normalization": dataclasses.asdict(norm),
        "labels": list(found.labels.class_names) if found.labels else None,
    }
