"""Our models as transformers' AST and back: the same numbers, or a refusal naming why."""

import pytest
import torch

from ssast import SSAST, SSASTClassifier, SSASTConfig, load_checkpoint
from ssast.hf import from_hf, head_state, hf_config, to_hf


@pytest.mark.parametrize("source", ["scratch", "released layout"])
def test_encoder_hidden_states_equal_transformers_ast(small_model, fbank, source):
    model = small_model
    if source == "released layout":  # our export in the original layout, read back
        model = load_checkpoint(small_model.to_original_state_dict()).eval()
    hf = to_hf(model)
    with torch.no_grad():
        ours = model.encode(fbank, with_cls=True)
        theirs = hf(fbank)
    torch.testing.assert_close(theirs.last_hidden_state, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, ours[:, :2].mean(1), atol=1e-4, rtol=0)
    back = from_hf(hf)
    assert isinstance(back, SSAST)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(fbank), model.encode(fbank), atol=0, rtol=0)


def test_a_cls_classifier_is_ast_for_audio_classification(small_cfg, fbank):
    torch.manual_seed(2)
    clf = SSASTClassifier(small_cfg.replace(patch_stride=(10, 10)), 4, pooling="cls").eval()
    with torch.no_grad():
        clf.head[1].bias.normal_()  # the head is zero-free, so a swapped one would show
    hf = to_hf(clf, ["w", "x", "y", "z"])
    assert hf.config.id2label == {0: "w", 1: "x", 2: "y", 3: "z"}
    assert (hf.config.frequency_stride, hf.config.time_stride) == (10, 10)
    with torch.no_grad():
        want = clf(fbank)
        torch.testing.assert_close(hf(fbank).logits, want, atol=1e-4, rtol=0)
        back = from_hf(hf)
        assert isinstance(back, SSASTClassifier) and back.pooling == "cls"
        torch.testing.assert_close(back(fbank), want, atol=0, rtol=0)


def test_a_mean_classifier_is_ast_model_plus_its_head(small_cfg, fbank):
    torch.manual_seed(3)
    clf = SSASTClassifier(small_cfg, 3, pooling="mean").eval()
    hf = to_hf(clf)
    assert type(hf).__name__ == "ASTModel"
    head = head_state(clf)
    with torch.no_grad():
        pooled = hf(fbank).last_hidden_state[:, 2:].mean(1)
        normed = torch.nn.functional.layer_norm(
            pooled, (pooled.shape[-1],), head["layernorm.weight"], head["layernorm.bias"], 1e-5
        )
        logits = normed @ head["dense.weight"].T + head["dense.bias"]
        torch.testing.assert_close(logits, clf(fbank), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        (SSASTConfig.from_geometry("frame", input_tdim=64, num_masked=4), "128x2"),
        (SSASTConfig(size="base_nokd", input_tdim=32, num_masked=4), "only a cls token"),
    ],
)
def test_what_ast_cannot_express_is_refused_with_the_reason(cfg, reason):
    with pytest.raises(ValueError, match=reason):
        hf_config(cfg)
    if cfg.size == "tiny":
        with pytest.raises(ValueError, match=reason):
            to_hf(SSAST(cfg))
