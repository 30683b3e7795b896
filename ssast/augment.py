"""Fine-tuning augmentation on batches of normalised spectrograms, vectorised, seeded.

Shapes: B batch, T frames, F mel bins, K classes. Every function draws from an explicit
``torch.Generator`` and never loops over the batch in Python.

Differences from the original loader (reference section 6), on purpose:

* The original applies SpecAugment *before* normalisation with fill value 0 (a log
  value); here batches arrive normalised, so callers pass ``fill`` = the normalised image
  of 0, ``(0 - mean) / (2 std)``, which gives the same cells the same values.
* Mixup here mixes the (normalised log-mel) spectrograms of two clips of the batch. The
  original mixes the *waveforms* of a clip and a random partner from the whole data set
  and recomputes the fbank. Mixing features is what makes precomputed shards usable and
  costs nothing; it is not the same augmentation (log of a sum is not a sum of logs):
  a quiet partner still contributes its full log-spectrum shape, weighted by 1 - lambda.
"""

from __future__ import annotations

import numpy as np
import torch


def _uniform(
    shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)


def spec_augment(
    x: torch.Tensor,
    freq_mask: int,
    time_mask: int,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One frequency band and one time span per clip set to ``fill`` (torchaudio's rule).

    Width ``floor(U * param)`` (so at most param - 1) and start
    ``floor(U' * (size - width))``, U, U' uniform in [0, 1), as torchaudio's
    ``FrequencyMasking`` / ``TimeMasking`` that the original uses.

    Args:
        x: (B, T, F) spectrograms.
        freq_mask: maximum band width in mel bins (0: none).
        time_mask: maximum span in frames (0: none).

    Returns:
        (B, T, F) a masked copy.
    """
    B, T, F = x.shape
    keep = torch.ones(B, T, F, dtype=torch.bool, device=x.device)
    for size, param, dim in ((F, freq_mask, 2), (T, time_mask, 1)):
        if param <= 0:
            continue
        u = _uniform((2, B), x, generator)  # (2, B)
        width = (u[0] * param).floor().clamp(max=size)  # (B,)
        start = (u[1] * (size - width)).floor()  # (B,)
        pos = torch.arange(size, device=x.device)  # (size,)
        inside = (pos >= start[:, None]) & (pos < (start + width)[:, None])  # (B, size)
        keep &= ~(inside[:, None, :] if dim == 2 else inside[:, :, None])
    return torch.where(keep, x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def add_noise(
    x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 10
) -> torch.Tensor:
    """The original's noise augmentation: uniform [0, 1) noise scaled by U(0, 1) / 10 per
    clip, then a circular time shift by an integer in [-max_shift, max_shift - 1].

    Returns:
        (B, T, F) a noisy, shifted copy of ``x``.
    """
    B, T, F = x.shape
    scale = _uniform((B, 1, 1), x, generator) / 10  # (B, 1, 1)
    x = x + _uniform((B, T, F), x, generator).to(x.dtype) * scale.to(x.dtype)
    shift = torch.randint(-max_shift, max_shift, (B,), generator=generator, device=x.device)  # (B,)
    src = (torch.arange(T, device=x.device)[None, :] - shift[:, None]) % T  # (B, T)
    return torch.gather(x, 1, src[:, :, None].expand(B, T, F))  # out[t] = x[t - shift]


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    rate: float,
    alpha: float = 10.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip, with probability ``rate``, with a random partner of the same batch.

    ``x' = lam * x + (1 - lam) * x[partner]`` and the same for the targets, with
    ``lam ~ Beta(alpha, alpha)`` per clip (the original: Beta(10, 10)). Clips not chosen
    keep lam = 1. The partner is a random permutation of the batch.

    Args:
        x: (B, T, F) spectrograms.
        y: (B, K) float targets (one-hot or multi-hot).

    Returns:
        ((B, T, F), (B, K)) mixed copies.
    """
    if rate <= 0:
        return x, y
    B = x.shape[0]
    # torch has no seeded Beta sampler; derive a numpy one from the torch generator.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device))
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=B)  # (B,)
    chosen = _uniform((B,), x, generator).cpu().numpy() < rate  # (B,)
    lam = torch.as_tensor(np.where(chosen, lam, 1.0), dtype=x.dtype, device=x.device)
    partner = torch.randperm(B, generator=generator, device=x.device)  # (B,)
    x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[partner]
    y = lam[:, None].to(y.dtype) * y + (1 - lam[:, None].to(y.dtype)) * y[partner]
    return x, y
