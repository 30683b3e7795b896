"""Model references, and the feature contract every model of ours carries.

A reference is a checkpoint file (ours: ``final/ssast.pt``, ``model.pt``; or a released
SSAST ``.pth``), local or ``s3://``; a directory holding one (``final/ssast.pt``,
``ssast.pt`` or ``model.pt``); or an MLflow URI (``runs:/<id>/<path>``,
``models:/<name>/<version>``); or a local Hugging Face folder of transformers' AST
(``jobs/export.py --format hf`` writes one; needs the ``export`` extra). Every job that
takes a model reads it through :func:`read_model`.

Our checkpoints record ``features`` (the :class:`FeatureConfig` the model was trained on)
and ``normalization`` (its statistics); fine-tuned ones also ``task`` (classes, label
column). A released ``.pth`` implies the SSAST defaults (``FeatureConfig()``) and no
statistics. Raw audio given to a model is featurized with the model's own settings, and
a featurized dataset made with other settings is refused (:func:`check_features`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec

from pipeline.features import FeatureConfig
from pipeline.labels import LabelSet
from pipeline.normalization import Normalization
from pipeline.schema import feature_diff
from ssast import SSAST, SSASTClassifier, load_checkpoint
from ssast.checkpoint import checkpoint_payload, read_checkpoint

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
AST_MODEL_TYPE = "audio-spectrogram-transformer"
"""``model_type`` of transformers' AST in a ``config.json``."""
CHECKPOINT_NAMES = ("final/ssast.pt", "ssast.pt", "model.pt")
"""What a directory reference may hold, in the order they are looked for."""


@dataclass(frozen=True)
class ModelFile:
    """A model read from a reference, with what it was trained on."""

    ref: str
    payload: dict[str, Any]
    """Our checkpoint format (a released file converted): what load_checkpoint takes."""
    model: SSAST | SSASTClassifier
    features: FeatureConfig
    normalization: Normalization | None
    """None: the file carries no statistics (a released .pth, or an older checkpoint)."""
    labels: LabelSet | None
    """Fine-tuned classifiers: their classes and label column."""

    @property
    def kind(self) -> Literal["classifier", "pretrain"]:
        return "classifier" if isinstance(self.model, SSASTClassifier) else "pretrain"


def contract(features: FeatureConfig, normalization: Normalization) -> dict[str, Any]:
    """The checkpoint keys that record what a model was trained on."""
    return {"features": features.to_dict(), "normalization": normalization.to_dict()}


def read_model(ref: str) -> ModelFile:
    """Read any model reference (see the module docstring), weights only.

    Raises:
        ValueError: nothing at the reference, or not an SSAST checkpoint.
    """
    if is_hf_folder(ref):
        return read_hf(ref)
    payload = read_payload(ref)
    model = load_checkpoint(payload)
    if payload.get("format") != "ssast-ray":
        payload = checkpoint_payload(model)  # actors then need no conversion
    features = (
        FeatureConfig.from_dict(payload["features"]) if "features" in payload else FeatureConfig()
    )
    task = payload.get("task") or {}
    stats = payload.get("normalization") or task.get("normalization")  # older model.pt
    if isinstance(stats, list | tuple):
        stats = {"mean": stats[0], "std": stats[1]}
    normalization = Normalization.from_dict(stats) if stats else None
    labels = LabelSet.from_dict(task) if task.get("class_names") else None
    return ModelFile(ref, payload, model, features, normalization, labels)


def is_hf_folder(ref: str) -> bool:
    """A local Hugging Face ``save_pretrained`` folder of transformers' AST."""
    config = Path(ref) / "config.json"
    if ref.startswith(MLFLOW_SCHEMES) or "://" in ref or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == AST_MODEL_TYPE
    except (OSError, ValueError):
        return False


def read_hf(ref: str) -> ModelFile:
    """Our model from a transformers AST folder (ours exported, or anyone's): weights,
    labels (``id2label``) and, from ``preprocessor_config.json``, the sample rate, mel bins
    and statistics. Needs the ``export`` extra (transformers)."""
    try:
        from transformers import ASTForAudioClassification, ASTModel
    except ImportError as err:
        raise ValueError(
            f"model {ref} is a Hugging Face folder: install the export extra "
            "(pip install -e '.[export]') to read it"
        ) from err
    from ssast.hf import class_names_of, from_hf

    folder = Path(ref)
    config = json.loads((folder / "config.json").read_text())
    head = "ASTForAudioClassification" in (config.get("architectures") or [])
    hf = (ASTForAudioClassification if head else ASTModel).from_pretrained(ref)
    model = from_hf(hf)
    labels = LabelSet(tuple(class_names_of(hf))) if head else None
    ours = folder / "ssast_export.json"  # our export: the exact feature contract
    if ours.is_file():
        summary = json.loads(ours.read_text())
        features = FeatureConfig.from_dict(summary["features"])
        normalization = Normalization.from_dict(summary["normalization"])
        if (folder / "ssast_head.safetensors").is_file():  # a pooling=mean classifier
            model, labels = _with_mean_head(model, folder, summary["labels"])
    else:
        pre = folder / "preprocessor_config.json"
        pre = json.loads(pre.read_text()) if pre.is_file() else {}
        features = FeatureConfig(
            sample_rate_hz=int(pre.get("sampling_rate", 16000)),
            num_mel_bins=int(pre.get("num_mel_bins", model.cfg.input_fdim)),
        )
        normalization = None
        if pre.get("do_normalize", True) and "mean" in pre and "std" in pre:
            normalization = Normalization(float(pre["mean"]), float(pre["std"]))
    extra: dict[str, Any] = {"features": features.to_dict()}
    if normalization:
        extra["normalization"] = normalization.to_dict()
    if labels:
        extra["task"] = labels.to_dict()
    payload = checkpoint_payload(model, extra=extra)
    return ModelFile(ref, payload, model, features, normalization, labels)


def _with_mean_head(
    encoder: SSAST, folder: Path, names: list[str]
) -> tuple[SSASTClassifier, LabelSet]:
    """A pooling=mean classifier from an exported encoder and its ssast_head.safetensors."""
    from safetensors.torch import load_file

    head = load_file(str(folder / "ssast_head.safetensors"))
    clf = SSASTClassifier(encoder.cfg, len(names), pooling="mean")
    clf.encoder.load_state_dict(encoder.encoder.state_dict())
    clf.head.load_state_dict(
        {
            "0.weight": head["layernorm.weight"],
            "0.bias": head["layernorm.bias"],
            "1.weight": head["dense.weight"],
            "1.bias": head["dense.bias"],
        }
    )
    return clf.eval(), LabelSet(tuple(names))


def encoder_of(model: SSAST | SSASTClassifier, ref: str) -> SSAST:
    """The model as a pretraining-geometry :class:`SSAST` (a fine-tuned classifier's
    encoder with fresh pretext heads; its positions resized back would not be exact, so
    its stride must be its patch shape). ``ref`` names it in errors."""
    if not isinstance(model, SSASTClassifier):
        return model
    clf = model
    if clf.cfg.patch_stride != clf.cfg.patch_shape:
        raise ValueError(
            f"{ref} is a classifier with overlapping patches (stride "
            f"{clf.cfg.patch_stride}); start from its pretrained checkpoint"
        )
    model = SSAST(clf.cfg.replace(num_masked=1))
    model.encoder.load_state_dict(clf.encoder.state_dict())
    return model


def read_payload(ref: str) -> dict[str, Any]:
    """The raw checkpoint dict a reference points to."""
    if ref.startswith(MLFLOW_SCHEMES):
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp)
            return read_checkpoint(_find_checkpoint(Path(local), ref))
    fs, path = fsspec.core.url_to_fs(ref)
    if not fs.exists(path):
        raise ValueError(
            f"model {ref}: no such file or directory; give a checkpoint, a "
            "training output directory, or an MLflow runs:/ or models:/ URI"
        )
    if fs.isdir(path):
        for name in CHECKPOINT_NAMES:
            if fs.exists(f"{path}/{name}"):
                return read_payload(ref.rstrip("/") + "/" + name)
        raise ValueError(f"model {ref}: a directory without {', '.join(CHECKPOINT_NAMES)}")
    with fs.open(path, "rb") as f:
        return read_checkpoint(f, name=ref)  # a file object is named by the reference


def check_features(model: ModelFile, found: FeatureConfig, where: str) -> None:
    """ValueError naming every field where a dataset's features differ from the model's."""
    if found.same_frames(model.features):
        return
    raise ValueError(
        f"{where} was featurized with other settings than model {model.ref} was trained on "
        f"({feature_diff(found, model.features, 'data', 'model')}). Featurize the audio "
        "again with the model's settings "
        "(jobs/featurize.py features.<key>=...), or give the raw audio (a manifest), which "
        "is featurized with the model's own settings"
    )


def _find_checkpoint(local: Path, uri: str):
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt")) + sorted(local.rglob("*.pth"))
    if not found:
        raise ValueError(f"{uri} holds no .pt / .pth checkpoint")
    return found[0]
