"""Shapes, parameter counts and config validation for every size and geometry."""

import pytest
import torch

from ssast import SSAST, SSASTClassifier, SSASTConfig

# Encoder alone (tokens, positions, patch projection, blocks, final norm) at 128 x 1024
# with 16x16 patches, as measured on the original model class (reference section 1.1).
ENCODER_PARAMS = {"tiny": 5_487_168, "small": 21_591_168, "base": 85_649_664}


def _meta_model(cfg: SSASTConfig) -> SSAST:
    with torch.device("meta"):
        return SSAST(cfg)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_encoder_parameter_count_matches_original(size):
    model = _meta_model(SSASTConfig(size=size))
    assert sum(p.numel() for p in model.encoder.parameters()) == ENCODER_PARAMS[size]


@pytest.mark.parametrize("size", ["tiny", "small", "base", "base_nokd"])
@pytest.mark.parametrize("geometry", ["patch", "frame"])
def test_token_grid_and_widths(size, geometry):
    cfg = SSASTConfig.from_geometry(geometry, size=size)
    model = _meta_model(cfg)
    D, C = cfg.preset.embed_dim, cfg.preset.num_extra_tokens
    assert cfg.grid == ((8, 64) if geometry == "patch" else (1, 512))
    assert model.encoder.pos_embed.shape == (1, C + 512, D)
    assert model.encoder.patch_embed.proj.weight.shape == (D, 1, *cfg.patch_shape)
    assert model.cpredlayer[2].weight.shape == (256, D)


@pytest.mark.parametrize(
    ("shape", "stride", "F", "T", "grid"),
    [
        ((16, 16), (10, 10), 128, 1024, (12, 101)),  # AS-20K fine-tuning
        ((16, 16), (10, 10), 128, 512, (12, 50)),  # ESC-50 patch
        ((128, 2), (128, 1), 128, 512, (1, 511)),  # ESC-50 frame
        ((128, 2), (128, 1), 128, 128, (1, 127)),  # Speech Commands frame
    ],
)
def test_fine_tuning_grids_match_reference_table(shape, stride, F, T, grid):
    cfg = SSASTConfig(
        patch_shape=shape, patch_stride=stride, input_fdim=F, input_tdim=T, num_masked=1
    )
    assert cfg.grid == grid


def test_encode_shapes(small_model, fbank):
    tokens = small_model.encode(fbank)
    assert tokens.shape == (3, 32, 192)
    assert small_model.encode(fbank, with_cls=True).shape == (3, 34, 192)


def test_base_nokd_has_one_extra_token():
    cfg = SSASTConfig(size="base_nokd", input_tdim=32, num_masked=4)
    model = SSAST(cfg)
    assert model.encoder.dist_token is None
    assert model.encode(torch.zeros(1, 32, 128), with_cls=True).shape == (1, 1 + 16, 768)
    out = model.pretrain_loss(torch.randn(2, 32, 128))  # the original crashes here
    assert torch.isfinite(out["loss"])


def test_classifier_pooling_and_logits(small_cfg, fbank):
    torch.manual_seed(0)
    for pooling in ("mean", "cls"):
        clf = SSASTClassifier(small_cfg, num_classes=5, pooling=pooling)
        assert clf(fbank).shape == (3, 5)
    clf = SSASTClassifier(small_cfg, num_classes=5, pooling="mean")
    tokens = clf.encoder(fbank)
    assert torch.allclose(clf.embed(fbank), tokens[:, 2:].mean(1))
    clf.pooling = "cls"
    assert torch.allclose(clf.embed(fbank), (tokens[:, 0] + tokens[:, 1]) / 2)
    assert clf.head[0].eps == 1e-5 and clf.encoder.norm.eps == 1e-6


def test_classifier_from_pretrained_copies_encoder(small_model, fbank):
    clf = SSASTClassifier.from_pretrained(small_model, num_classes=3).eval()
    assert torch.allclose(clf.encoder(fbank)[:, 2:], small_model.encode(fbank))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": "huge"}, "size"),
        ({"patch_shape": (16,)}, "patch_shape"),
        ({"patch_shape": (256, 16)}, "patch_shape"),
        ({"num_masked": 513}, "num_masked"),
        ({"mask_strategy": "blocks"}, "mask_strategy"),
        ({"generative_weight": -1.0}, "generative_weight"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SSASTConfig(**kwargs)


def test_config_round_trips_through_dict():
    cfg = SSASTConfig.from_geometry("frame", size="small", num_masked=250)
    assert SSASTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SSASTConfig keys"):
        SSASTConfig.from_dict({**cfg.to_dict(), "fshape": 16})


def test_wrong_input_size_is_a_clear_error(small_model):
    with pytest.raises(ValueError, match="64 frames, 128 mel bins"):
        small_model.encode(torch.zeros(1, 100, 128))


def test_pretraining_needs_non_overlapping_patches(small_model, fbank):
    adapted = small_model.adapted(patch_stride=(10, 10))
    with pytest.raises(ValueError, match="non-overlapping"):
        adapted.pretrain_loss(fbank)
