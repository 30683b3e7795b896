"""Our transformer block against timm's, the class the original SSAST builds its ViT from."""

import subprocess
import sys
from functools import partial

import torch
from timm.layers import trunc_normal_ as timm_trunc_normal_
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from ssast.block import Block


def test_block_equals_timms_block_bit_for_bit():
    torch.manual_seed(0)
    ours = Block(192, 3)
    torch.manual_seed(0)
    # The settings SSAST's timm ViT uses (DeiT: qkv bias, eps 1e-6, no dropout).
    theirs = TimmBlock(
        192, 3, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)
    )
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same names, shapes, and the same default init draws
    for p in ours.parameters():  # weights away from their init, for a stronger check
        p.data.normal_(0, 0.1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 37, 192, requires_grad=True)
    y = torch.randn(2, 37, 192)
    x2 = x.detach().clone().requires_grad_(True)
    out, ref = ours(x), theirs(x2)
    assert torch.equal(out, ref)
    (out * y).sum().backward()
    (ref * y).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_trunc_normal_draws_as_timms():
    a, b = torch.empty(1000), torch.empty(1000)
    torch.manual_seed(1)
    nn.init.trunc_normal_(a, std=0.02)
    torch.manual_seed(1)
    timm_trunc_normal_(b, std=0.02)
    assert torch.equal(a, b)


def test_importing_ssast_imports_neither_timm_nor_torchvision():
    code = (
        "import sys, ssast; print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
