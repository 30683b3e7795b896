"""Fine-tuning metrics against scikit-learn; lr groups, the lr schedule and losses."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from jobs.finetuning.config import FtOptimSection
from jobs.finetuning.worker import loss_fn, param_groups
from jobs.kit.metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    per_class_report,
    roc_auc,
    summary,
)
from jobs.kit.optim import LrSchedule
from jobs.pretraining.config import PretrainOptimSection
from ssast import SSASTClassifier, SSASTConfig


def single_label(n=60, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    scores = rng.normal(size=(n, k)).round(1)  # rounding makes ties
    scores[np.arange(n), labels] += 0.8
    return scores.astype(np.float32), np.eye(k, dtype=np.float32)[labels], labels


def test_metrics_match_scikit_learn_single_label():
    scores, targets, labels = single_label()
    assert accuracy(scores, targets) == pytest.approx(skm.accuracy_score(labels, scores.argmax(1)))
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    for k in range(4):
        assert ap[k] == pytest.approx(skm.average_precision_score(targets[:, k], scores[:, k]))
        assert auc[k] == pytest.approx(skm.roc_auc_score(targets[:, k], scores[:, k]))
    np.testing.assert_array_equal(
        confusion_matrix(scores, targets),
        skm.confusion_matrix(labels, scores.argmax(1), labels=range(4)),
    )
    p, r, f1, support = skm.precision_recall_fscore_support(
        labels, scores.argmax(1), labels=range(4), zero_division=0
    )
    rows = per_class_report(scores, targets, list("abcd"))
    for k, row in enumerate(rows):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[k], r[k], f1[k], support[k])
        )
    s = summary(scores, targets, "test")
    assert s["test/mAP"] == pytest.approx(
        skm.average_precision_score(targets, scores, average="macro")
    )
    assert s["test/AUC"] == pytest.approx(skm.roc_auc_score(targets, scores, average="macro"))


def test_metrics_multilabel_and_a_class_without_positives():
    rng = np.random.default_rng(1)
    targets = (rng.random((50, 5)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # no positives: AP and AUC undefined for it
    scores = (rng.normal(size=(50, 5)) + 1.5 * targets).astype(np.float32)
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    assert math.isnan(ap[4]) and math.isnan(auc[4])
    for k in range(4):
        assert ap[k] == pytest.approx(skm.average_precision_score(targets[:, k], scores[:, k]))
        assert auc[k] == pytest.approx(skm.roc_auc_score(targets[:, k], scores[:, k]))
    s = summary(scores, targets, "valid")
    assert s["valid/mAP"] == pytest.approx(np.mean(ap[:4]))
    assert s["valid/AUC"] == pytest.approx(np.mean(auc[:4]))


@pytest.fixture(scope="module")
def classifier():
    return SSASTClassifier(SSASTConfig(size="tiny", input_tdim=64, num_masked=1), 5, "mean")


def test_param_groups_layer_decay_and_head_multiplier(classifier):
    cfg = FtOptimSection(layer_decay=0.5, head_lr_mult=10.0)
    groups = param_groups(classifier, cfg)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) == len(scale)
    L = len(classifier.encoder.blocks)
    named = dict(classifier.named_parameters())
    for name in ("head.0.weight", "head.1.weight", "head.1.bias"):  # LayerNorm + Linear
        assert scale[id(named[name])] == 10.0
    assert scale[id(named["encoder.norm.weight"])] == 1.0
    for i in range(L):
        assert scale[id(named[f"encoder.blocks.{i}.attn.qkv.weight"])] == 0.5 ** (L - i)
    assert scale[id(named["encoder.pos_embed"])] == 0.5 ** (L + 1)
    classifier.encoder.requires_grad_(False)
    try:
        frozen = param_groups(classifier, cfg)
        assert {g["lr_scale"] for g in frozen} == {10.0}
    finally:
        classifier.encoder.requires_grad_(True)


def test_multistep_matches_torch_multisteplr():
    cfg = FtOptimSection(
        lr=1.0, schedule="multistep", decay_start=6, decay_every=1, decay_factor=0.85
    )
    schedule = LrSchedule(cfg, total_steps=100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(6, 1000, 1)), gamma=0.85)
    for epoch in range(1, 15):  # the original steps the scheduler after each epoch
        assert schedule.lr(step=0, epoch=epoch) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_warmup_then_cosine_constant():
    warm = LrSchedule(FtOptimSection(lr=1.0, schedule="constant", warmup_steps=10), 100)
    assert [warm.lr(s) for s in (0, 4, 9, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    cos = LrSchedule(FtOptimSection(lr=1.0, schedule="cosine"), 100)
    assert cos.lr(0) == pytest.approx(1.0)
    assert cos.lr(50) == pytest.approx(0.5)
    assert cos.lr(100) == pytest.approx(0.0, abs=1e-12)
    # Warm-up, then cosine over the remaining steps to min_lr (the pretraining default).
    pre = LrSchedule(PretrainOptimSection(lr=1.0, warmup_steps=10, min_lr=0.1), 110)
    assert [pre.lr(s) for s in (0, 9, 10, 60, 110)] == pytest.approx([0.1, 1.0, 1.0, 0.55, 0.1])


def test_plateau_halves_after_patience_and_resumes_its_state():
    cfg = PretrainOptimSection(lr=1.0, warmup_steps=0, schedule="plateau", plateau_patience=1)
    sched = LrSchedule(cfg, 100)
    for acc in (0.1, 0.2, 0.2, 0.15):  # two intervals without improvement: halve once
        sched.observe(acc)
    assert sched.lr(50) == pytest.approx(0.5)
    again = LrSchedule(cfg, 100)
    again.load_state_dict(sched.state_dict())
    assert again.lr(50) == pytest.approx(0.5)
    assert (
        LrSchedule(PretrainOptimSection(lr=1.0, warmup_steps=0, schedule="constant"), 100).lr(50)
        == 1.0
    )


def test_losses_match_torch_references():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    idx = torch.arange(8) % 5
    onehot = torch.nn.functional.one_hot(idx, 5).float()
    torch.testing.assert_close(
        loss_fn("ce", logits, onehot), torch.nn.functional.cross_entropy(logits, idx)
    )
    soft = 0.7 * onehot + 0.3 * onehot.roll(1, 0)
    manual = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss_fn("ce", logits, soft), manual)
    manual_bce = -(
        onehot * torch.nn.functional.logsigmoid(logits)
        + (1 - onehot) * torch.nn.functional.logsigmoid(-logits)
    ).mean()
    torch.testing.assert_close(loss_fn("bce", logits, onehot), manual_bce)
