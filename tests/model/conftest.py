"""Small, fast model settings for unit tests."""

import pytest
import torch

from ssast import SSAST, SSASTConfig


@pytest.fixture
def small_cfg() -> SSASTConfig:
    # 128 mel x 64 frames -> 8 x 4 grid of 16x16 patches; 12 masked.
    return SSASTConfig(size="tiny", input_tdim=64, num_masked=12)


@pytest.fixture
def small_model(small_cfg) -> SSAST:
    torch.manual_seed(0)
    return SSAST(small_cfg).eval()


@pytest.fixture
def fbank() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 64, 128, generator=g)
