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

SEGMENTING = ("segment_s", "min_segment_s")
"""Fields that decide how recordings are cut into clips, not what a frame holds."""


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
    """Cut longer clips into consecutive segments of this length; None keeps clips whole."""
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
            raise ValueError(
                f"resample_quality must be a soxr preset, got {self.resample_quality!r}"
            )
        if self.window_samples < 1 or self.shift_samples < 1:
            raise ValueError(
                f"frame_length_ms / frame_shift_ms must span at least one sample at "
                f"{self.sample_rate_hz} Hz, got {self.frame_length_ms} / {self.frame_shift_ms}"
            )
        nyquist = self.sample_rate_hz / 2
        high = self.high_freq_hz if self.high_freq_hz > 0 else nyquist + self.high_freq_hz
        if not 0 <= self.low_freq_hz < high <= nyquist:
            raise ValueError(
                f"need 0 <= low_freq_hz < high edge <= Nyquist ({nyquist:g} Hz at "
                f"sample_rate_hz {self.sample_rate_hz}), got low_freq_hz {self.low_freq_hz}, "
                f"high_freq_hz {self.high_freq_hz} (high edge {high:g})"
            )
        if not 0 <= self.preemphasis <= 1:
            raise ValueError(f"preemphasis must be in [0, 1], got {self.preemphasis}")
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

    def same_frames(self, other: FeatureConfig) -> bool:
        """Equal in every field but the segmentation (:data:`SEGMENTING`): features of one
        are valid input of a model trained on the other."""
        x, y = self.to_dict(), other.to_dict()
        return all(x[k] == y[k] for k in x if k not in SEGMENTING)

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
    mono = mix_channels(samples, cfg)
    if sample_rate != cfg.sample_rate_hz:
        mono = soxr.resample(mono, sample_rate, cfg.sample_rate_hz, quality=cfg.resample_quality)
    return finish_waveform(mono, cfg)


def prepare_blocks(blocks, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """:func:`prepare_waveform` of the concatenation of ``blocks`` ((n_i, channels)
    float32 arrays, in order), holding only one source block at a time: channels mixed
    and resampled block by block (soxr's stream gives the one-shot result exactly)."""
    stream = None
    if sample_rate != cfg.sample_rate_hz:
        stream = soxr.ResampleStream(
            sample_rate, cfg.sample_rate_hz, 1, dtype="float32", quality=cfg.resample_quality
        )
    parts = []
    for block in blocks:
        mono = mix_channels(block, cfg)
        parts.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    mono = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    del parts
    return finish_waveform(mono, cfg, owned=True)


def mix_channels(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(n, channels) -> (n,) contiguous float32 by ``cfg.channel_mix``."""
    if samples.shape[1] == 1 or cfg.channel_mix == "first":
        mono = samples[:, 0]
    else:  # (n, c) @ (c,): numpy's mean over a short last axis is ~50x slower
        channels = samples.shape[1]
        mono = samples.astype(np.float32, copy=False) @ np.full(channels, 1 / channels, np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def finish_waveform(mono: np.ndarray, cfg: FeatureConfig, owned: bool = False) -> np.ndarray:
    """A mono waveform at the target rate: DC removed (in place when the caller ``owned``
    the array), padded to one analysis window."""
    if cfg.remove_dc and mono.size:
        dc = mono.mean(dtype=np.float64).astype(np.float32)
        if owned:
            mono -= dc
        else:
            mono = mono - dc
    if mono.size < cfg.window_samples:
        mono = np.pad(mono, (0, cfg.window_samples - mono.size))
    return mono.astype(np.float32, copy=False)


class FbankExtractor:
    """Batched Kaldi fbank; build once per worker (mel banks, window and buffers are reused).

    Frames of consecutive clips are stacked and processed in passes of at most
    ``frames_per_pass`` frames through preallocated buffers: large fresh tensors cost a
    page-faulting allocation per op, which dominated the per-clip time.
    """

    def __init__(self, cfg: FeatureConfig, frames_per_pass: int = 512) -> None:
        self.cfg = cfg
        self.frames_per_pass = frames_per_pass
        w, n_fft = cfg.window_samples, cfg.fft_size
        self.window = torch.hann_window(w, periodic=False)
        banks, _ = get_mel_banks(
            cfg.num_mel_bins,
            n_fft,
            float(cfg.sample_rate_hz),
            cfg.low_freq_hz,
            cfg.high_freq_hz,
            100.0,
            -500.0,
            1.0,
        )  # (F, fft/2): Kaldi banks, no VTLN warp
        self.banks_t = F.pad(banks, (0, 1)).T.contiguous()  # (fft/2 + 1, F)
        self.eps = torch.finfo(torch.float32).eps
        P = frames_per_pass
        self._padded = torch.zeros(P, n_fft)  # columns >= w stay 0: the FFT zero-padding
        self._shifted = torch.empty(P, w)
        self._spectrum = torch.empty(P, n_fft // 2 + 1, dtype=torch.complex64)
        self._power = torch.empty(P, n_fft // 2 + 1)
        self._mel = torch.empty(P, cfg.num_mel_bins)

    def _logmel(self, frames: torch.Tensor) -> torch.Tensor:
        """(m, window) raw frames, m <= frames_per_pass -> (m, F) log-mel view of a buffer.

        The Kaldi chain in order: per-frame DC removal, pre-emphasis with the first sample
        replicated, window, zero-pad to the FFT size, |rfft|^2, mel banks, log floored at eps.
        """
        m, w = frames.shape
        x = self._padded[:m, :w]
        x.copy_(frames)
        x.sub_(x.mean(dim=1, keepdim=True))
        # Same pre-emphasis order as torchaudio (scale, then subtract): the lowest mel bins
        # hold little energy after DC removal, and a fused a - alpha * b moves their logs
        # by up to 1e-3.
        previous = self._shifted[:m]  # 0.97 * [x0, x0, x1, ..., x_{w-2}]
        torch.mul(x[:, :-1], self.cfg.preemphasis, out=previous[:, 1:])
        torch.mul(x[:, :1], self.cfg.preemphasis, out=previous[:, :1])
        torch.sub(x, previous, out=previous)
        torch.mul(previous, self.window, out=x)
        spectrum = torch.fft.rfft(self._padded[:m], out=self._spectrum[:m])
        parts = torch.view_as_real(spectrum)  # re^2 + im^2: |X|^2 without a slow hypot
        power = torch.mul(parts[..., 0], parts[..., 0], out=self._power[:m])
        power.addcmul_(parts[..., 1], parts[..., 1])
        mel = torch.mm(power, self.banks_t, out=self._mel[:m])
        return mel.clamp_min_(self.eps).log_()

    def __call__(self, waves: list[np.ndarray], half: bool = False) -> list[np.ndarray]:
        """Log-mel of each prepared waveform.

        Args:
            waves: mono float32 waveforms at the target rate, each >= one window long.
            half: return float16 (the storage type; torch converts much faster than numpy).

        Returns:
            One (m_i, F) float32 (or float16) array per waveform.
        """
        w, s, P = self.cfg.window_samples, self.cfg.shift_samples, self.frames_per_pass
        out = []
        for wave in waves:
            samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
            m = 1 + (samples.numel() - w) // s
            frames = samples.as_strided((m, w), (s, 1))  # (m, window) view, snip_edges
            result = torch.empty(
                (m, self.cfg.num_mel_bins), dtype=torch.float16 if half else torch.float32
            )
            for a in range(0, m, P):
                result[a : a + P] = self._logmel(frames[a : a + P])  # casts when half
            result = result.numpy()
            out.append(result)
        return out
