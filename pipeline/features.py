"""Kaldi-compatible log-mel filterbank features, batched over clips.

The result equals ``torchaudio.compliance.kaldi.fbank`` with the settings SSAST uses
(``htk_compat=True, use_energy=False, window_type="hanning", dither=0.0,
frame_shift=10, num_mel_bins=128``; frame length 25 ms, ``snip_edges=True``,
per-frame DC removal, pre-emphasis 0.97, 512-point FFT, power spectrum, Kaldi mel
banks from 20 Hz to Nyquist, natural log floored at float32 eps). It is computed for
many clips in one pass (frames of all clips stacked, one FFT, one mel matmul) with the
mel banks and window built once, instead of once per clip.

Shapes: n samples, m frames, F mel bins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torchaudio.compliance.kaldi import get_mel_banks


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """How audio becomes features. Stored with every featurized dataset; readers compare it."""

    sample_rate_hz: int = 16000
    """Audio is resampled to this rate before the filterbank."""
    num_mel_bins: int = 128
    """F, mel bins."""
    frame_length_ms: float = 25.0
    """Analysis window length."""
    frame_shift_ms: float = 10.0
    """Hop between frames."""
    preemphasis: float = 0.97
    """Pre-emphasis coefficient (Kaldi default)."""
    low_freq_hz: float = 20.0
    """Lowest mel-bank edge."""
    high_freq_hz: float = 0.0
    """Highest mel-bank edge; <= 0 means Nyquist + this value (Kaldi convention)."""
    channel_mix: Literal["mean", "first"] = "mean"
    """Multi-channel audio: average the channels, or keep channel 0 as the original SSAST."""
    remove_dc: bool = True
    """Subtract the clip's mean sample before the filterbank, as the original SSAST loader."""
    resample_quality: Literal["VHQ", "HQ", "MQ", "LQ", "QQ"] = "HQ"
    """soxr quality preset for rate conversion."""
    segment_s: float | None = None
    """Cut clips longer than this into consecutive segments of this length; None keeps clips whole."""
    min_segment_s: float = 1.0
    """A trailing segment shorter than this is merged into the one before it."""

    def __post_init__(self) -> None:
        if self.sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be > 0, got {self.sample_rate_hz}")
        if self.num_mel_bins < 1:
            raise ValueError(f"num_mel_bins must be >= 1, got {self.num_mel_bins}")
        if not 0 < self.frame_shift_ms <= self.frame_length_ms:
            raise ValueError(
                f"need 0 < frame_shift_ms <= frame_length_ms, got {self.frame_shift_ms}, "
                f"{self.frame_length_ms}"
            )
        if self.channel_mix not in ("mean", "first"):
            raise ValueError(f"channel_mix must be 'mean' or 'first', got {self.channel_mix!r}")
        if self.resample_quality not in ("VHQ", "HQ", "MQ", "LQ", "QQ"):
            raise ValueError(f"resample_quality must be a soxr preset, got {self.resample_quality!r}")
        if self.segment_s is not None and self.segment_s <= self.frame_length_ms / 1000:
            raise ValueError(f"segment_s must exceed one frame, got {self.segment_s}")

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate_hz * self.frame_length_ms / 1000)

    @property
    def shift_samples(self) -> int:
        return int(self.sample_rate_hz * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_samples - 1).bit_length()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown feature config keys {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def num_frames(self, num_samples: int) -> int:
        """Frames of a clip of ``num_samples`` at the target rate (short clips give 1)."""
        return 1 + max(0, num_samples - self.window_samples) // self.shift_samples


def prepare_waveform(samples: np.ndarray, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """Decoded audio -> mono float32 at ``cfg.sample_rate_hz``, ready for the filterbank.

    Args:
        samples: (n, channels) float32, as ``soundfile.read(..., always_2d=True)`` returns.
        sample_rate: rate of ``samples`` in Hz.

    Returns:
        (n',) float32: channels mixed, resampled, DC removed, zero-padded to at least one
        analysis window (a clip shorter than 25 ms yields one frame instead of none).
    """
    mono = samples.mean(axis=1) if cfg.channel_mix == "mean" else samples[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sample_rate != cfg.sample_rate_hz:
        mono = soxr.resample(mono, sample_rate, cfg.sample_rate_hz, quality=cfg.resample_quality)
    if cfg.remove_dc and mono.size:
        mono = mono - mono.mean(dtype=np.float64).astype(np.float32)
    if mono.size < cfg.window_samples:
        mono = np.pad(mono, (0, cfg.window_samples - mono.size))
    return mono.astype(np.float32, copy=False)


class FbankExtractor:
    """Batched Kaldi fbank; build once per worker (mel banks and window are cached)."""

    def __init__(self, cfg: FeatureConfig, max_frames_per_pass: int = 32768) -> None:
        self.cfg = cfg
        self.max_frames_per_pass = max_frames_per_pass
        self.window = torch.hann_window(cfg.window_samples, periodic=False)
        banks, _ = get_mel_banks(
            cfg.num_mel_bins, cfg.fft_size, float(cfg.sample_rate_hz), cfg.low_freq_hz,
            cfg.high_freq_hz, 100.0, -500.0, 1.0,
        )  # (F, fft/2): Kaldi banks, no VTLN warp
        self.banks_t = F.pad(banks, (0, 1)).T.contiguous()  # (fft/2 + 1, F)
        self.eps = torch.finfo(torch.float32).eps

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        """(n,) -> (m, window) strided view, snip_edges framing."""
        w, s = self.cfg.window_samples, self.cfg.shift_samples
        m = 1 + (wave.numel() - w) // s
        return wave.as_strided((m, w), (s, 1))

    def _logmel(self, frames: torch.Tensor) -> torch.Tensor:
        """(m, window) raw frames -> (m, F) log-mel, the Kaldi chain in order."""
        frames = frames - frames.mean(dim=1, keepdim=True)  # per-frame DC
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # replicate-pad shift
        frames = (frames - self.cfg.preemphasis * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=self.cfg.fft_size)  # (m, fft/2 + 1), zero-padded
        power = torch.view_as_real(spectrum).pow(2).sum(-1)  # |X|^2
        return (power @ self.banks_t).clamp_min(self.eps).log()  # (m, F)

    def __call__(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Log-mel of each prepared waveform.

        Args:
            waves: mono float32 waveforms at the target rate, each >= one window long.

        Returns:
            One (m_i, F) float32 array per waveform.
        """
        out: list[np.ndarray] = []
        start = 0
        while start < len(waves):
            chunk, frames = [], 0  # bound memory: one FFT over at most max_frames frames
            while start < len(waves) and (not chunk or frames < self.max_frames_per_pass):
                wave = torch.from_numpy(np.ascontiguousarray(waves[start], dtype=np.float32))
                chunk.append(self._frames(wave))
                frames += chunk[-1].shape[0]
                start += 1
            logmel = self._logmel(torch.cat(chunk))
            out.extend(t.numpy() for t in logmel.split([c.shape[0] for c in chunk]))
        return out
