"""Adapters: LoRA and bottleneck on the classifier's encoder (counts, init, freezing, I/O)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ssast import (
    SSAST,
    AdapterConfig,
    SSASTClassifier,
    SSASTConfig,
    adapter_parameter_names,
    add_adapters,
    classifier_to_original_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from ssast.adapters import LoRALinear
from ssast.checkpoint import checkpoint_payload

RANK = 4
ADAPTERS = {
    "none": AdapterConfig(),
    "lora": AdapterConfig(kind="lora", rank=RANK, alpha=2.0 * RANK),
    "bottleneck": AdapterConfig(kind="bottleneck", rank=RANK),
}
KINDS = ["lora", "bottleneck"]


@pytest.fixture(scope="module")
def cfg() -> SSASTConfig:
    # 32 mel x 32 frames -> 2 x 2 grid of 16x16 patches: the full tiny depth, few tokens.
    return SSASTConfig(size="tiny", input_tdim=32, input_fdim=32, num_masked=1)


@pytest.fixture(scope="module")
def built(cfg) -> dict[str, SSASTClassifier]:
    # Built once per module (initialising 12 blocks dominates the run time); tests get copies.
    out = {}
    for kind, adapter in ADAPTERS.items():
        torch.manual_seed(0)
        out[kind] = SSASTClassifier(cfg, 3, adapter=adapter).eval()
    return out


@pytest.fixture
def build(built):
    return lambda kind="none": copy.deepcopy(built[kind])


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))


def perturb_adapters(clf: SSASTClassifier, seed: int = 2) -> None:
    """Random adapter weights (B and up are zero at init, which would hide them)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(clf.named_parameters())
    with torch.no_grad():
        for name in sorted(adapter_parameter_names(clf)):
            params[name].copy_(0.1 * torch.randn(params[name].shape, generator=g))


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_add_the_expected_parameters_under_new_names(cfg, build, kind):
    plain, adapted = build(), build(kind)
    D, depth, r = cfg.preset.embed_dim, cfg.preset.depth, RANK
    if kind == "lora":  # qkv: D -> 3D, proj: D -> D; A is (r, in), B is (out, r)
        per_block = r * (D + 3 * D) + r * (D + D)
        block0 = {f"attn.{m}.lora_{ab}" for m in ("qkv", "proj") for ab in "ab"}
    else:  # down D -> r and up r -> D, with biases
        per_block = D * r + r + r * D + D
        block0 = {f"mlp.fc2.adapter.{m}.{p}" for m in ("down", "up") for p in ("weight", "bias")}
    num_plain = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in adapted.parameters()) - num_plain == depth * per_block
    new = set(adapted.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(adapted.state_dict())
    assert {k for k in new if k.startswith("encoder.blocks.0.")} == {
        "encoder.blocks.0." + k for k in block0
    }
    assert new == adapter_parameter_names(adapted) and len(new) == depth * 4


@pytest.mark.parametrize("kind", KINDS)
def test_adapted_classifier_starts_as_the_plain_one(build, x, kind):
    plain, adapted = build(), build(kind)
    with torch.no_grad():  # other plain weights than the adapted model was built with
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and set(missing) == adapter_parameter_names(adapted)
    assert torch.equal(adapted(x), plain(x))
    perturb_adapters(adapted)  # the adapters are in the forward path
    assert not torch.allclose(adapted(x), plain(x))


@pytest.mark.parametrize("kind", KINDS)
def test_only_adapter_and_head_train(cfg, build, x, kind):
    clf = build(kind).train()
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    head = {"head." + n for n, _ in clf.head.named_parameters()}
    assert trainable == adapter_parameter_names(clf) | head
    assert len(clf.trainable_parameters()) == len(trainable)
    frozen = {n: p.detach().clone() for n, p in clf.named_parameters() if n not in trainable}
    before = {n: p.detach().clone() for n, p in clf.named_parameters() if n in trainable}
    logits = clf(x)
    opt = torch.optim.SGD(clf.trainable_parameters(), lr=0.5)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    opt.step()
    params = dict(clf.named_parameters())
    assert all(params[n].grad is None and torch.equal(params[n], v) for n, v in frozen.items())
    # B (LoRA) and up (bottleneck) get gradients from the first step in every block.
    grown = [n for n in before if n.endswith(("lora_b", "up.weight"))]
    assert len(grown) == cfg.preset.depth * (2 if kind == "lora" else 1)
    assert all(not torch.equal(params[n], before[n]) for n in grown)
    assert not torch.allclose(clf(x), logits)


def test_no_adapter_trains_everything(cfg, build):
    clf = build()
    assert clf.adapter == AdapterConfig() and clf.adapter.kind == "none"
    assert all(p.requires_grad for p in clf.parameters())
    assert len(clf.trainable_parameters()) == len(list(clf.parameters()))


@pytest.mark.parametrize("kind", KINDS)
def test_pretrained_encoder_loads_into_adapted_classifier(cfg, x, kind):
    torch.manual_seed(3)
    pretrained = SSAST(cfg).eval()
    adapted = SSASTClassifier.from_pretrained(pretrained, 3, adapter=ADAPTERS[kind]).eval()
    assert adapted.adapter == ADAPTERS[kind]
    own = adapted.encoder.state_dict()
    for k, v in pretrained.encoder.state_dict().items():
        assert torch.equal(own[k], v), k
    assert all(p.requires_grad for p in pretrained.parameters())  # the source is not frozen
    assert not adapted.encoder.pos_embed.requires_grad
    assert torch.equal(adapted.encoder(x)[:, 2:], pretrained.encode(x))


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_keeps_the_adapter(build, x, kind, tmp_path):
    clf = build(kind)
    perturb_adapters(clf)
    assert checkpoint_payload(clf)["adapter"] == ADAPTERS[kind].to_dict()
    save_checkpoint(clf, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt").eval()
    assert isinstance(back, SSASTClassifier) and back.adapter == clf.adapter
    assert torch.equal(back(x), clf(x))
    assert {n for n, p in back.named_parameters() if p.requires_grad} == {
        n for n, p in clf.named_parameters() if p.requires_grad
    }


def test_plain_payload_has_no_adapter_key(build):
    payload = checkpoint_payload(build())
    assert "adapter" not in payload
    assert load_checkpoint(payload).adapter.kind == "none"


def test_lora_scale_is_alpha_over_rank():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 9)
    h = torch.randn(5, 6)
    one = LoRALinear(base, rank=2, scale=AdapterConfig(kind="lora", rank=2).scale)
    two = LoRALinear(base, rank=2, scale=AdapterConfig(kind="lora", rank=2, alpha=4.0).scale)
    assert one.weight is base.weight and one.scale == 1.0 and two.scale == 2.0
    with torch.no_grad():
        for m in (one, two):
            m.lora_a.copy_(torch.arange(12.0).view(2, 6) / 10)
            m.lora_b.copy_(torch.arange(18.0).view(9, 2) / 10)
    update = h @ one.lora_a.T @ one.lora_b.T  # (5, 9)
    torch.testing.assert_close(one(h), base(h) + update)
    torch.testing.assert_close(two(h), base(h) + 2 * update)


def test_merge_lora_keeps_logits_and_leaves_plain_keys(build, x):
    clf = build("lora")
    perturb_adapters(clf)
    logits = clf(x)
    clf.merge_lora()
    assert clf.adapter.kind == "none" and not adapter_parameter_names(clf)
    assert list(clf.state_dict()) == list(build().state_dict())
    torch.testing.assert_close(clf(x), logits, rtol=1e-4, atol=1e-5)
    assert "module.v.blocks.0.attn.qkv.weight" in classifier_to_original_state_dict(clf)
    with pytest.raises(ValueError, match="LoRA"):
        build("bottleneck").merge_lora()


def test_adding_adapters_twice_is_refused(build):
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(build("lora").encoder, ADAPTERS["bottleneck"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"kind": "prefix"}, "kind"),
        ({"alpha": 0.0}, "alpha"),
    ],
)
def test_bad_adapter_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AdapterConfig(**kwargs)


def test_adapter_config_dict_round_trip():
    cfg = AdapterConfig(kind="bottleneck", rank=16)
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="ranc"):
        AdapterConfig.from_dict({"kind": "lora", "ranc": 4})
