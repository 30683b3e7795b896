"""A deterministic corpus of labeled synthetic sound events, with some broken files.

Used by ``make demo``, the tests and the benchmarks, so that everything exercises the
real decode path (several formats, rates and channel counts) without any download.

Classes (the ``label`` column): tone, chirp, noise_burst, harmonic, clicks, am, fm.
Each clip has random parameters drawn from a seeded generator, so the same arguments
always produce byte-identical files.
"""

from __future__ import annotations

import csv
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = ("tone", "chirp", "noise_burst", "harmonic", "clicks", "am", "fm")
RATES_HZ = (16000, 22050, 44100, 48000)
FORMATS = (("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"))

BROKEN_KINDS = ("random_bytes", "empty_file", "truncated", "non_finite", "zero_rate", "missing")


@dataclass(frozen=True)
class Clip:
    path: str
    label: str
    split: str


def synthesize(
    label: str, duration_s: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One mono event of class ``label``: (n,) float32 in [-1, 1]."""
    n = max(1, int(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(200.0, 2000.0)
    if label == "tone":
        x = np.sin(2 * np.pi * f0 * t)
    elif label == "chirp":
        f1 = rng.uniform(2000.0, 6000.0)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration_s)))
    elif label == "noise_burst":
        x = rng.standard_normal(n) * (np.sin(np.pi * t / duration_s) ** 2)
    elif label == "harmonic":
        x = sum(np.sin(2 * np.pi * f0 / 2 * k * t) / k for k in range(1, 8))
    elif label == "clicks":
        x = np.zeros(n)
        period = int(sample_rate / rng.uniform(4.0, 20.0))
        x[::period] = 1.0
        x = np.convolve(x, np.hanning(32), mode="same")
    elif label == "am":
        x = np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 12) * t))
    elif label == "fm":
        x = np.sin(2 * np.pi * f0 * t + rng.uniform(2, 8) * np.sin(2 * np.pi * 5 * t))
    else:
        raise ValueError(f"unknown class {label!r}; choose from {CLASSES}")
    x = x + 0.01 * rng.standard_normal(n)
    x = x / max(1e-6, np.abs(x).max()) * rng.uniform(0.2, 0.9)
    return x.astype(np.float32)


def write_corpus(
    root: str | Path,
    num_clips: int = 140,
    duration_s: tuple[float, float] = (2.0, 6.0),
    seed: int = 0,
    broken: bool = True,
    rates_hz: tuple[int, ...] = RATES_HZ,
    formats: tuple[tuple[str, str, str], ...] = FORMATS,
) -> Path:
    """Write clips and ``manifest.csv`` (path, label, split) under ``root``.

    Labels cycle through :data:`CLASSES`; rates, formats and channel counts vary by clip;
    splits are 70 % train, 15 % valid, 15 % test. With ``broken``, one file of each of
    :data:`BROKEN_KINDS` is added (split "train", label "broken").

    Returns:
        Path of the manifest.
    """
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips: list[Clip] = []
    for i in range(num_clips):
        label = CLASSES[i % len(CLASSES)]
        rate = rates_hz[int(rng.integers(len(rates_hz)))]
        ext, fmt, subtype = formats[int(rng.integers(len(formats)))]
        stereo = bool(rng.random() < 0.3)
        dur = float(rng.uniform(*duration_s))
        wave = synthesize(label, dur, rate, rng)
        data = np.stack([wave, 0.8 * wave], axis=1) if stereo else wave
        rel = f"audio/{i:05d}_{label}.{ext}"
        sf.write(root / rel, data, rate, format=fmt, subtype=subtype)
        split = ("train",) * 14 + ("valid",) * 3 + ("test",) * 3
        clips.append(Clip(rel, label, split[i % 20]))
    if broken:
        clips.extend(_write_broken(root, rng))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows((c.path, c.label, c.split) for c in clips)
    return manifest


def _write_broken(root: Path, rng: np.random.Generator) -> list[Clip]:
    out = []
    for kind in BROKEN_KINDS:
        rel = f"audio/broken_{kind}.wav"
        path = root / rel
        if kind == "random_bytes":
            path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif kind == "empty_file":
            path.write_bytes(b"")
        elif kind == "truncated":
            sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
            path.write_bytes(path.read_bytes()[:30])
        elif kind == "non_finite":
            x = np.zeros(16000, np.float32)
            x[100] = np.nan
            sf.write(path, x, 16000, subtype="FLOAT")
        elif kind == "zero_rate":
            sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
            data = bytearray(path.read_bytes())
            data[24:32] = struct.pack("<II", 0, 0)  # fmt chunk: sample rate, byte rate
            path.write_bytes(bytes(data))
        # "missing": listed in the manifest, never written.
        out.append(Clip(rel, "broken", "train"))
    return out
