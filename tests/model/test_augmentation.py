"""Vectorised fine-tuning augmentation against naive per-clip loops on the same draws."""

import numpy as np
import pytest
import torch

from ssast.augment import add_noise, mixup, spec_augment

B, T, F = 6, 40, 24


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, F, generator=torch.Generator().manual_seed(seed))


def naive_spec_augment(x, freq_mask, time_mask, fill, gen):
    out = x.clone()
    for size, param, axis in ((F, freq_mask, 2), (T, time_mask, 1)):
        if param <= 0:
            continue
        u = torch.rand((2, B), generator=gen)  # the implementation's draws, in its order
        for b in range(B):
            width = min(int(u[0, b] * param), size)
            start = int(u[1, b] * (size - width))
            if axis == 2:
                out[b, :, start : start + width] = fill
            else:
                out[b, start : start + width, :] = fill
    return out


@pytest.mark.parametrize("freq_mask,time_mask", [(8, 0), (0, 16), (8, 16), (24, 40)])
def test_spec_augment_matches_a_per_clip_loop(freq_mask, time_mask):
    x = batch()
    got = spec_augment(
        x, freq_mask, time_mask, fill=0.5, generator=torch.Generator().manual_seed(1)
    )
    want = naive_spec_augment(x, freq_mask, time_mask, 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_spec_augment_widths_cover_zero_to_param_minus_one():
    x = torch.zeros(512, 10, 64)
    out = spec_augment(
        x, freq_mask=6, time_mask=0, fill=1.0, generator=torch.Generator().manual_seed(0)
    )
    widths = out[:, 0, :].sum(1).long()  # masked bins per clip
    assert set(widths.tolist()) == set(range(6))
    band = out[:, 0, :] > 0
    starts = band.float().argmax(1)
    for b in range(512):  # one contiguous band
        w = int(widths[b])
        assert band[b, starts[b] : starts[b] + w].all() and int(band[b].sum()) == w


def test_add_noise_matches_a_per_clip_loop():
    x = batch()
    got = add_noise(x, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    scale = torch.rand((B, 1, 1), generator=gen) / 10
    noise = torch.rand((B, T, F), generator=gen)
    shift = torch.randint(-10, 10, (B,), generator=gen)
    want = torch.stack(
        [torch.roll(x[b] + noise[b] * scale[b], int(shift[b]), dims=0) for b in range(B)]
    )
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, x)


def test_mixup_matches_a_per_clip_loop_and_keeps_targets_convex():
    x = batch()
    y = torch.nn.functional.one_hot(torch.arange(B) % 3, 3).float()
    got_x, got_y = mixup(x, y, rate=0.7, alpha=10.0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    lam = np.random.default_rng(seed).beta(10.0, 10.0, size=B)
    chosen = torch.rand((B,), generator=gen).numpy() < 0.7
    partner = torch.randperm(B, generator=gen)
    for b in range(B):
        k = float(lam[b]) if chosen[b] else 1.0
        p = int(partner[b])
        torch.testing.assert_close(got_x[b], k * x[b] + (1 - k) * x[p])
        torch.testing.assert_close(got_y[b], k * y[b] + (1 - k) * y[p])
    torch.testing.assert_close(got_y.sum(1), torch.ones(B))
    assert chosen.any() and not torch.equal(got_x, x)


def test_mixup_rate_zero_is_identity_and_draws_are_seeded():
    x, y = batch(), torch.eye(B)
    same_x, same_y = mixup(x, y, rate=0.0, generator=torch.Generator().manual_seed(0))
    assert same_x is x and same_y is y
    a = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(5))
    b = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(5))
    c = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a[0], b[0])
    assert not torch.equal(a[0], c[0])
