"""The 2-D sin-cos position table and ``pos_init=sincos``: token order, the rest of the
init unchanged, configs round-trip."""

import math

import pytest
import torch

from ssast import SSAST, SSASTConfig
from ssast.patching import sincos_positions


def test_sincos_table_is_frequency_major_with_one_axis_per_half():
    f_dim, t_dim, D = 3, 5, 16
    table = sincos_positions((f_dim, t_dim), D)
    assert table.shape == (f_dim * t_dim, D) and table.dtype == torch.float32
    for n in range(f_dim * t_dim):
        fi, ti = divmod(n, t_dim)  # token n = f_idx * t_dim + t_idx, as patchify
        for half, i in ((0, fi), (1, ti)):
            part = table[n, half * D // 2 : (half + 1) * D // 2]
            want = [math.sin(i * 10000 ** (-k / 4)) for k in range(4)]
            want += [math.cos(i * 10000 ** (-k / 4)) for k in range(4)]
            torch.testing.assert_close(part, torch.tensor(want), atol=1e-6, rtol=0)
    assert torch.cdist(table, table).add(torch.eye(len(table))).min() > 0.1  # all distinct


def test_sincos_needs_a_width_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions((2, 2), 6)


def test_sincos_init_changes_only_the_patch_positions():
    cfg = SSASTConfig(size="tiny", input_tdim=64, num_masked=4)
    torch.manual_seed(0)
    plain = SSAST(cfg).state_dict()
    torch.manual_seed(0)
    sincos = SSAST(cfg.replace(pos_init="sincos")).state_dict()
    C = cfg.preset.num_extra_tokens
    pos = sincos.pop("encoder.pos_embed")
    torch.testing.assert_close(pos[0, C:], sincos_positions(cfg.grid, 192), rtol=0, atol=0)
    torch.testing.assert_close(pos[0, :C], plain.pop("encoder.pos_embed")[0, :C], rtol=0, atol=0)
    assert sincos.keys() == plain.keys()
    for k in plain:  # every other draw is the default init's, in the same order
        torch.testing.assert_close(sincos[k], plain[k], rtol=0, atol=0, msg=k)


def test_pos_init_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="pos_init"):
        SSASTConfig(pos_init="learned")
    cfg = SSASTConfig(size="tiny", input_tdim=64, num_masked=4, pos_init="sincos")
    assert SSASTConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "pos_init"}  # an older checkpoint
    assert SSASTConfig.from_dict(old).pos_init == "trunc_normal"
