"""Checkpoints: the released SSAST layout, our format, positional-embedding adaptation."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from ssast import (
    SSAST,
    SSASTClassifier,
    SSASTConfig,
    classifier_to_original_state_dict,
    load_checkpoint,
    load_original_checkpoint,
    load_original_classifier,
    save_checkpoint,
)
from ssast.checkpoint import read_checkpoint


def released_layout(
    E: int,
    depth: int,
    f_dim: int,
    t_dim: int,
    shape=(16, 16),
    fdim=128,
    tdim=1024,
    dist=True,
    seed=0,
) -> dict[str, torch.Tensor]:
    """A state dict written from the reference's key table (section 2.1), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g) * 0.05

    C = 2 if dist else 1
    sd = {
        "module.p_input_fdim": torch.tensor(fdim),
        "module.p_input_tdim": torch.tensor(tdim),
        "module.mask_embed": r(1, 1, E),
        "module.v.cls_token": r(1, 1, E),
        "module.v.pos_embed": r(1, C + f_dim * t_dim, E),
    }
    if dist:
        sd["module.v.dist_token"] = r(1, 1, E)
    sd["module.v.patch_embed.proj.weight"] = r(E, 1, *shape)
    sd["module.v.patch_embed.proj.bias"] = r(E)
    for i in range(depth):
        b = f"module.v.blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + r(E),
                b + "norm1.bias": r(E),
                b + "attn.qkv.weight": r(3 * E, E),
                b + "attn.qkv.bias": r(3 * E),
                b + "attn.proj.weight": r(E, E),
                b + "attn.proj.bias": r(E),
                b + "norm2.weight": 1 + r(E),
                b + "norm2.bias": r(E),
                b + "mlp.fc1.weight": r(4 * E, E),
                b + "mlp.fc1.bias": r(4 * E),
                b + "mlp.fc2.weight": r(E, 4 * E),
                b + "mlp.fc2.bias": r(E),
            }
        )
    sd.update(
        {
            "module.v.norm.weight": 1 + r(E),
            "module.v.norm.bias": r(E),
            "module.v.head.weight": r(1000, E),
            "module.v.head.bias": r(1000),
        }
    )
    if dist:
        sd.update({"module.v.head_dist.weight": r(1000, E), "module.v.head_dist.bias": r(1000)})
    for h in ("cpredlayer", "gpredlayer"):
        sd.update(
            {
                f"module.{h}.0.weight": r(E, E),
                f"module.{h}.0.bias": r(E),
                f"module.{h}.2.weight": r(256, E),
                f"module.{h}.2.bias": r(256),
            }
        )
    return sd


def original_forward(sd: dict, x: torch.Tensor, heads: int, stride=None) -> torch.Tensor:
    """timm 0.4.5 ViT forward as SSAST runs it, from the original keys: explicit softmax
    attention, LayerNorm eps 1e-6, erf GELU. (B, T, F) -> (B, C + N, E)."""
    v = {k[len("module.v.") :]: t for k, t in sd.items() if k.startswith("module.v.")}
    w = v["patch_embed.proj.weight"]
    image = x.transpose(1, 2).unsqueeze(1)
    h = F.conv2d(image, w, v["patch_embed.proj.bias"], stride=stride or w.shape[2:])
    h = h.flatten(2).transpose(1, 2)
    B, E = h.shape[0], h.shape[-1]
    extra = [v["cls_token"]] + ([v["dist_token"]] if "dist_token" in v else [])
    h = torch.cat([t.expand(B, -1, -1) for t in extra] + [h], 1) + v["pos_embed"]
    depth = len({k.split(".")[1] for k in v if k.startswith("blocks.")})
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: t for k, t in v.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(h, (E,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv = y @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
        qkv = qkv.reshape(B, -1, 3, heads, E // heads).permute(2, 0, 3, 1, 4)
        q, k, val = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (E // heads) ** -0.5).softmax(dim=-1)
        y = (attn @ val).transpose(1, 2).reshape(B, -1, E)
        h = h + y @ p["attn.proj.weight"].T + p["attn.proj.bias"]
        y = F.layer_norm(h, (E,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        y = F.gelu(y @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"])
        h = h + y @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    return F.layer_norm(h, (E,), v["norm.weight"], v["norm.bias"], eps=1e-6)


def test_released_layout_loads_and_computes_the_original_function():
    sd = released_layout(E=192, depth=12, f_dim=8, t_dim=4, tdim=64)
    model = load_original_checkpoint(sd).eval()
    assert model.cfg.size == "tiny" and model.cfg.input_tdim == 64
    x = torch.randn(2, 64, 128)
    want = original_forward(sd, x, heads=3)
    torch.testing.assert_close(model.encode(x, with_cls=True), want, atol=1e-4, rtol=1e-4)


def test_released_layout_without_module_prefix_or_heads_loads():
    sd = released_layout(E=192, depth=12, f_dim=8, t_dim=4, tdim=64)
    bare = {
        k[len("module.") :]: v
        for k, v in sd.items()
        if not k.startswith(("module.cpredlayer", "module.gpredlayer", "module.v.head"))
    }
    model = load_original_checkpoint(bare)
    torch.testing.assert_close(model.encoder.pos_embed, sd["module.v.pos_embed"])


def test_export_has_the_released_key_set_and_parameter_total():
    torch.manual_seed(0)
    model = SSAST(SSASTConfig(size="tiny"))
    ours = model.to_original_state_dict()
    ref = released_layout(E=192, depth=12, f_dim=8, t_dim=64)
    assert list(ours) == list(ref)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    assert ours["module.p_input_tdim"].dtype == torch.int64
    # 6,046,290 = the original tiny pretraining model incl. unused heads (reference 1.1).
    assert sum(v.numel() for v in ours.values()) == 6_046_290


def test_round_trip_ours_to_original_to_ours_is_exact(small_model, fbank, tmp_path):
    path = tmp_path / "orig.pth"
    torch.save(small_model.to_original_state_dict(), path)
    back = load_original_checkpoint(path).eval()
    assert back.cfg == small_model.cfg.replace(num_masked=back.cfg.num_masked)
    assert torch.equal(back.encode(fbank), small_model.encode(fbank))
    mask = small_model.sample_mask(3, generator=torch.Generator().manual_seed(0))
    a = small_model.pretrain_loss(fbank, mask_index=mask)
    b = back.pretrain_loss(fbank, mask_index=mask)
    assert torch.equal(a["loss"], b["loss"])


def test_our_checkpoint_round_trip(small_model, fbank, tmp_path):
    save_checkpoint(small_model, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt").eval()
    assert back.cfg == small_model.cfg
    assert torch.equal(back.encode(fbank), small_model.encode(fbank))
    clf = SSASTClassifier.from_pretrained(small_model, num_classes=4, pooling="cls").eval()
    save_checkpoint(clf, tmp_path / "c.pt")
    clf2 = load_checkpoint(tmp_path / "c.pt").eval()
    assert isinstance(clf2, SSASTClassifier) and clf2.pooling == "cls"
    assert torch.equal(clf2(fbank), clf(fbank))


def test_load_checkpoint_also_reads_the_released_layout(small_model, tmp_path):
    torch.save(small_model.to_original_state_dict(), tmp_path / "orig.pth")
    assert isinstance(load_checkpoint(tmp_path / "orig.pth"), SSAST)


def test_fine_tuned_original_round_trip(small_model, fbank):
    adapted = small_model.adapted(patch_stride=(10, 10), input_tdim=64)
    clf = SSASTClassifier.from_pretrained(adapted, num_classes=7).eval()
    ft = classifier_to_original_state_dict(clf)
    assert "module.mlp_head.1.weight" in ft and "module.p_input_fdim" not in ft
    back = load_original_classifier(
        small_model.to_original_state_dict(), ft, patch_stride=(10, 10), input_tdim=64
    ).eval()
    assert torch.equal(back(fbank), clf(fbank))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: sd.update({"module.mlp_head.0.weight": torch.ones(192)}), "fine-tuned"),
        (lambda sd: sd.pop("module.p_input_tdim"), "p_input_tdim"),
        (lambda sd: sd.update({"module.v.extra.weight": torch.ones(1)}), "v.extra.weight"),
        (lambda sd: sd.update({"module.v.norm.weight": torch.ones(7)}), "norm.weight"),
        (lambda sd: sd.pop("module.v.blocks.3.mlp.fc1.bias"), "blocks.3.mlp.fc1.bias"),
        (lambda sd: sd.update({"module.v.cls_token": torch.ones(1, 1, 100)}), "width 100"),
    ],
)
def test_mismatches_are_clear_value_errors(mutate, message):
    sd = released_layout(E=192, depth=12, f_dim=8, t_dim=4, tdim=64)
    mutate(sd)
    with pytest.raises(ValueError, match=message):
        load_original_checkpoint(sd)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _truncated(path):
    torch.save({"a": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: torch.save({"module.x": _Evil()}, p), r"refused: .*GLOBAL \S*print"),
        (lambda p: p.write_bytes(pickle.dumps({"x": _Evil()})), "refused: .*need code to run"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (_truncated, "truncated or not a torch checkpoint"),
        (lambda p: p.write_text("hello"), "truncated or not a torch checkpoint"),
        (lambda p: torch.save([1, 2], p), "holds a list, expected a dict"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_checkpoint_files_are_named_errors_and_pickles_never_run(
    tmp_path, capsys, make, message
):
    """Every loader reads with weights_only=True; what a bad file holds is said, with the
    file's name, and never the advice to switch the safety off."""
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(ValueError, match=message) as err:
        load_original_checkpoint(path)
    assert "model.pth" in str(err.value) and "weights_only" not in str(err.value)
    assert "pwned" not in capsys.readouterr().out


def test_a_checkpoint_is_a_path_or_a_file():
    with pytest.raises(TypeError, match="path or a binary file, got list"):
        read_checkpoint(["model.pth"])


# ---------------------------------------------------------- positional embedding
def _pos_image(model):
    C = model.encoder.num_extra_tokens
    f, t = model.cfg.grid
    pe = model.encoder.pos_embed.detach()
    return pe[:, :C], pe[:, C:].transpose(1, 2).reshape(1, -1, f, t)


def _pretrained(**kw) -> SSAST:
    torch.manual_seed(0)
    return SSAST(SSASTConfig(size="tiny", **kw))


def test_pos_embed_crop_in_time_then_resize_in_frequency():
    # ESC-50 patch: 8x64 -> 12x50: keep time columns 7..56, then bilinear 8 -> 12 rows.
    model = _pretrained()
    new = load_original_checkpoint(
        model.to_original_state_dict(), patch_stride=(10, 10), input_tdim=512
    )
    extra, img = _pos_image(model)
    want = F.interpolate(img[..., 7:57], size=(12, 50), mode="bilinear", align_corners=False)
    new_extra, got = _pos_image(new)
    assert new.cfg.grid == (12, 50)
    torch.testing.assert_close(got, want)
    assert torch.equal(new_extra, extra)


def test_pos_embed_resize_in_time():
    # AS-20K patch: 8x64 -> 12x101 equals one bilinear resize (reference 5.2).
    model = _pretrained()
    new = model.adapted(patch_stride=(10, 10))
    _, img = _pos_image(model)
    want = F.interpolate(img, size=(12, 101), mode="bilinear", align_corners=False)
    torch.testing.assert_close(_pos_image(new)[1], want)


def test_stride_change_keeps_projection_weights(fbank):
    model = _pretrained(input_tdim=64, num_masked=12)
    new = model.adapted(patch_stride=(10, 10))
    proj = new.encoder.patch_embed.proj
    assert proj.stride == (10, 10)
    assert torch.equal(proj.weight, model.encoder.patch_embed.proj.weight)
    image = fbank.transpose(1, 2).unsqueeze(1)
    want = F.conv2d(image, proj.weight, proj.bias, stride=(10, 10)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(new.encoder.patch_embed(fbank), want)


def test_frame_model_crop():
    # Speech Commands frame: 1x512 -> 1x127 keeps columns 193..319.
    model = _pretrained(patch_shape=(128, 2), patch_stride=(128, 2))
    new = model.adapted(patch_stride=(128, 1), input_tdim=128)
    assert new.cfg.grid == (1, 127)
    torch.testing.assert_close(_pos_image(new)[1], _pos_image(model)[1][..., 193:320])


def test_fewer_mel_bins_crops_frequency_where_the_original_crashes():
    model = _pretrained()
    new = model.adapted(input_fdim=64)  # 4 rows: centre rows 2..5 of 8
    assert new.cfg.grid == (4, 64)
    torch.testing.assert_close(_pos_image(new)[1], _pos_image(model)[1][:, :, 2:6, :])
