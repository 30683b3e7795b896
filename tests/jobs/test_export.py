"""jobs/export.py: a checkpoint of ours to a Hugging Face folder and to ONNX, checked
with transformers and onnxruntime, and the Hugging Face folder read back."""

import json

import numpy as np
import pytest
import torch

from jobs.kit.export import export_model
from jobs.kit.models import contract, read_model
from pipeline.features import FbankExtractor, FeatureConfig, prepare_waveform
from pipeline.labels import LabelSet
from pipeline.normalization import Normalization
from ssast import SSAST, SSASTClassifier, SSASTConfig, save_checkpoint

NORM = Normalization(-5.5, 3.25)
CLASSES = ("dog", "rain", "siren")


def checkpoint(tmp_path, model, norm=NORM, name="model.pt") -> str:
    """A file as fine-tuning or pretraining writes it: weights, features, statistics,
    and for a classifier its task."""
    extra = contract(FeatureConfig(), norm)
    if isinstance(model, SSASTClassifier):
        extra["task"] = LabelSet(CLASSES).to_dict()
    save_checkpoint(model, tmp_path / name, extra=extra)
    return str(tmp_path / name)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    cfg = SSASTConfig(size="tiny", input_tdim=128, patch_stride=(10, 10), num_masked=1)
    clf = SSASTClassifier(cfg, len(CLASSES), pooling="cls").eval()
    with torch.no_grad():
        clf.head[1].bias.normal_()
    return clf


def test_hf_export_loads_in_transformers_and_reads_back(classifier, tmp_path):
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    ref = checkpoint(tmp_path, classifier)
    out = tmp_path / "hf"
    result = export_model(ref, "hf", str(out))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(result.files)
    hf = ASTForAudioClassification.from_pretrained(out)
    extractor = ASTFeatureExtractor.from_pretrained(out)

    # 1.3 s of a 16 kHz waveform: fewer frames than the model's 128 (padding included).
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(20800) + 0.05 * np.sin(np.arange(20800) / 7)).astype(
        np.float32
    )
    got = extractor(wave, sampling_rate=16000, return_tensors="pt").input_values  # (1, T, F)
    cfg = FeatureConfig()
    [fbank] = FbankExtractor(cfg)([prepare_waveform(wave[:, None], 16000, cfg)])
    x = np.zeros((1, 128, 128), np.float32)
    x[0, : len(fbank)] = fbank
    want = NORM.apply(x, np.array([len(fbank)]))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)

    with torch.no_grad():
        logits = hf(got).logits
        torch.testing.assert_close(logits, classifier(got), atol=1e-4, rtol=0)
    assert [hf.config.id2label[i] for i in range(3)] == list(CLASSES)

    back = read_model(str(out))  # the import path: any job's --model / --init
    assert back.kind == "classifier" and back.labels.class_names == CLASSES
    assert back.normalization == NORM
    with torch.no_grad():
        torch.testing.assert_close(back.model(got), logits, atol=1e-5, rtol=0)
    summary = json.loads((out / "ssast_export.json").read_text())
    assert summary["labels"] == list(CLASSES) and summary["input"]["frames"] == 128


def test_a_mean_pooled_clip_mean_classifier_exports_with_its_head_and_reads_back(tmp_path):
    """What the demo's recipe trains (pooling=mean, data.clip_mean): ASTModel + head file,
    notes that say so, and the exact model and feature contract back."""
    torch.manual_seed(4)
    clf = SSASTClassifier(SSASTConfig(size="tiny", input_tdim=64, num_masked=1), 3).eval()
    norm = Normalization(-5.5, 3.25, clip_mean=True)
    result = export_model(checkpoint(tmp_path, clf, norm), "hf", str(tmp_path / "hf"))
    assert "ssast_head.safetensors" in result.files
    assert any("pooling=mean" in n for n in result.notes)
    assert any("clip_mean" in n for n in result.notes)
    back = read_model(str(tmp_path / "hf"))
    assert back.kind == "classifier" and back.model.pooling == "mean"
    assert back.normalization == norm and back.labels.class_names == CLASSES
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), clf(x), atol=1e-5, rtol=0)


@pytest.mark.slow  # two ONNX exports through torch.export: ~15 s
def test_onnx_export_matches_torch_for_any_batch(classifier, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(1)
    encoder = SSAST(SSASTConfig(size="tiny", input_tdim=64, num_masked=4)).eval()
    for name, model in (("classifier", classifier), ("encoder", encoder)):
        out = tmp_path / name
        export_model(checkpoint(tmp_path, model, name=f"{name}.pt"), "onnx", str(out))
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        T, F = model.cfg.input_tdim, model.cfg.input_fdim
        for batch in (1, 5):
            x = torch.randn(batch, T, F)
            with torch.no_grad():
                want = model(x) if name == "classifier" else model.encode(x)
            [got] = session.run(None, {"fbank": x.numpy()})
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_the_cli_refuses_what_a_format_cannot_express_in_one_line(tmp_path, capsys):
    from jobs.export import main

    frame = SSAST(SSASTConfig.from_geometry("frame", input_tdim=64, num_masked=4))
    ref = checkpoint(tmp_path, frame)
    assert main(["--model", ref, "--format", "hf", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "frame geometry cannot be expressed" in err
    assert len(err.strip().splitlines()) == 1, err
