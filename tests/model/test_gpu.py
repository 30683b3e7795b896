"""CUDA path: the pretraining step under bf16 autocast, as jobs/pretrain.py runs it on GPUs."""

import pytest
import torch

from ssast import SSAST, SSASTConfig


@pytest.mark.gpu
def test_bf16_autocast_step_on_cuda():
    torch.manual_seed(0)
    model = SSAST(SSASTConfig(size="tiny", input_tdim=256, num_masked=100)).cuda()
    x = torch.randn(4, 256, 128, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.autocast("cuda", torch.bfloat16):
        out = model(x, generator=gen)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
