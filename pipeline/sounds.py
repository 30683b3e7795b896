"""Parametric sounds of the evaluation suite (:mod:`pipeline.suite`), pure NumPy.

Families: short events (:func:`event`), pitched notes (:func:`note`), pip rhythms
(:func:`rhythm`), background textures (:func:`texture`) and noises (:func:`noise`), built
from a few vectorised primitives (additive partials, band-passed noise by overlap-add,
damped sines, FFT convolution). A *source* is a dict of parameters drawn from
:data:`EVENT_RANGES` or :data:`INSTRUMENT_RANGES`; every function takes its randomness
from the ``numpy.random.Generator`` passed in. Output arrays are float64, unnormalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EVENTS = ("click", "knock", "clap", "whoosh", "chirp_up", "chirp_down", "buzz", "drip")
INSTRUMENTS = ("flute", "clarinet", "string", "pluck", "bell", "organ", "brass", "voice")
PATTERNS = {  # pips (S short, L long) and the gaps between them, in units of the clip's gap
    "one_long": ("L", ()),
    "two_short": ("SS", (1.0,)),
    "three_short": ("SSS", (1.0, 1.0)),
    "short_long": ("SL", (1.0,)),
    "long_short": ("LS", (1.0,)),
    "four_even": ("SSSS", (1.2, 1.2, 1.2)),
    "accelerating": ("SSSS", (2.0, 1.1, 0.5)),
    "decelerating": ("SSSS", (0.5, 1.1, 2.0)),
}
EVENT_RANGES = {  # each source draws every parameter uniformly from its range
    "click": {"f_hz": (2000, 6000), "tau_s": (0.001, 0.004)},
    "knock": {
        "f_hz": (120, 400),
        "tau_s": (0.015, 0.05),
        "hits": (2.2, 4.3),
        "gap_s": (0.08, 0.16),
    },
    "clap": {"f_hz": (800, 2500), "width": (0.3, 0.8), "tau_s": (0.02, 0.07)},
    "whoosh": {"f_hz": (300, 1000), "ratio": (3, 6), "dur_s": (0.4, 0.8)},
    "chirp_up": {"f_hz": (200, 800), "ratio": (2, 5), "dur_s": (0.15, 0.5), "harm": (1.1, 4.5)},
    "chirp_down": {"f_hz": (200, 800), "ratio": (2, 5), "dur_s": (0.15, 0.5), "harm": (1.1, 4.5)},
    "buzz": {"f_hz": (70, 220), "dur_s": (0.3, 0.7), "flutter_hz": (10, 40), "slope": (0.8, 1.5)},
    "drip": {"f_hz": (400, 900), "ratio": (1.5, 3), "tau_s": (0.015, 0.04)},
}
INSTRUMENT_RANGES = {  # f_hz: the centre of the source's register (notes span +-7 semitones)
    "flute": {"f_hz": (400, 900), "h2": (0.05, 0.3), "breath": (0.02, 0.1),
              "attack_s": (0.05, 0.15)},
    "clarinet": {"f_hz": (150, 400), "slope": (1.0, 2.0), "attack_s": (0.02, 0.06)},
    "string": {"f_hz": (200, 600), "slope": (0.8, 1.2), "attack_s": (0.1, 0.25)},
    "pluck": {"f_hz": (100, 500), "slope": (1.0, 2.0), "tau_s": (0.3, 1.0), "damp": (0.3, 0.8)},
    "bell": {"f_hz": (300, 900), "stretch": (0.95, 1.08), "tau_s": (0.6, 1.5)},
    "organ": {"f_hz": (100, 300), **{f"d{i}": (0.05, 1.0) for i in range(5)}},
    "brass": {"f_hz": (120, 350), "slope": (0.8, 1.3), "attack_s": (0.05, 0.12)},
    "voice": {"f_hz": (100, 300), "f1": (300, 800), "f2": (900, 2300), "f3": (2400, 3200),
              "vib_hz": (4.5, 6.5), "vib": (0.01, 0.03)},
}  # fmt: skip
BELL_RATIOS = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])  # Risset's bell
BELL_AMPS = np.array([1.0, 0.67, 1.0, 1.8, 2.67, 1.67, 1.46, 1.33, 1.33])


def event(label: str, p: dict, rate: int, rng: np.random.Generator) -> np.ndarray:
    """One sound event of class ``label`` with parameters ``p`` (Hz, s): (n,) at ``rate``."""
    if label == "click":
        return ring(p["f_hz"], p["tau_s"], rate) + 0.5 * ring(1.6 * p["f_hz"], p["tau_s"], rate)
    if label == "knock":
        one = ring(p["f_hz"], p["tau_s"], rate) + 0.5 * ring(2.3 * p["f_hz"], p["tau_s"], rate)
        gap, hits = int(p["gap_s"] * rate), int(p["hits"])
        x = np.zeros(gap * (hits - 1) + len(one))
        for h in range(hits):
            x[h * gap : h * gap + len(one)] += one * 0.8**h
        return x
    if label == "clap":
        t = np.arange(int(6 * p["tau_s"] * rate)) / rate
        return band_noise(len(t), rate, [p["f_hz"]], p["width"], rng) * np.exp(-t / p["tau_s"])
    n = int(p.get("dur_s", 6 * p.get("tau_s", 0)) * rate)
    t = np.arange(n) / rate
    if label == "whoosh":
        return band_noise(n, rate, [p["f_hz"], p["f_hz"] * p["ratio"]], 0.3, rng) * np.hanning(n)
    if label in ("chirp_up", "chirp_down"):
        f = p["f_hz"] * p["ratio"] ** (t / t[-1] if label == "chirp_up" else 1 - t / t[-1])
        k = np.arange(1.0, int(p["harm"]) + 1)
        return additive(f, k, 1 / k, rate, rng) * ramp(t, 0.01, 0.02)
    if label == "buzz":
        k = np.arange(1.0, 41)
        x = additive(np.full(n, p["f_hz"]), k, k ** -p["slope"], rate, rng)
        return x * (0.6 + 0.4 * np.sin(2 * np.pi * p["flutter_hz"] * t)) * ramp(t, 0.01, 0.03)
    if label == "drip":
        f = p["f_hz"] * np.minimum(p["ratio"], p["ratio"] ** (t / (3 * p["tau_s"])))
        return additive(f, [1.0], [1.0], rate, rng) * np.exp(-t / p["tau_s"])
    raise ValueError(f"unknown event class {label!r}; choose from {EVENTS}")


def note(label: str, p: dict, f0: float, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A note of family ``label`` at ``f0`` Hz, n samples at ``rate``; parameters ``p``."""
    t = np.arange(n) / rate
    k = np.arange(1.0, 31)
    env = ramp(t, p.get("attack_s", 0.005), 0.05)
    f = np.full(n, f0)
    if label == "flute":
        x = additive(f, k[:3], [1, p["h2"], p["h2"] / 3], rate, rng)
        return (x + p["breath"] * band_noise(n, rate, [2 * f0], 0.5, rng)) * env
    if label == "clarinet":
        odd = k[::2]
        return additive(f, odd, odd ** -p["slope"], rate, rng) * env
    if label == "string":
        f = f0 * (1 + 0.004 * np.sin(2 * np.pi * 5.5 * t))
        return additive(f, k, k ** -p["slope"], rate, rng) * env
    if label == "pluck":
        decay = np.exp(-t[None] * k[:, None] ** p["damp"] / p["tau_s"])  # (K, n)
        return additive(f, k, k[:, None] ** -p["slope"] * decay, rate, rng) * env
    if label == "bell":
        ratios = BELL_RATIOS ** p["stretch"]
        decay = np.exp(-t[None] * ratios[:, None] ** 0.7 / p["tau_s"])  # (K, n)
        return additive(f, ratios, BELL_AMPS[:, None] * decay, rate, rng) * env
    if label == "organ":
        amps = [p[f"d{i}"] for i in range(5)]
        return additive(f, [0.5, 1, 2, 4, 8], amps, rate, rng) * ramp(t, 0.01, 0.03)
    if label == "brass":
        dull = np.exp(-t / p["attack_s"])  # (n,): a dull onset that brightens
        amps = np.outer(k ** -p["slope"], 1 - dull) + np.outer(k ** -(p["slope"] + 2.5), dull)
        return additive(f, k, amps, rate, rng) * env
    if label == "voice":
        f = f0 * (1 + p["vib"] * np.sin(2 * np.pi * p["vib_hz"] * t))
        formants = sum(1 / (1 + ((k * f0 - p[m]) / 100) ** 2) for m in ("f1", "f2", "f3"))
        return additive(f, k, k**-1.5 * (0.05 + formants), rate, rng) * env
    raise ValueError(f"unknown instrument family {label!r}; choose from {INSTRUMENTS}")


def rhythm(label: str, f_hz: float, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Pips of pattern ``label`` on a carrier at ``f_hz`` with a random timbre: (n,) at rate."""
    pips, gaps = PATTERNS[label]
    short_s = rng.uniform(0.06, 0.1)
    lengths = np.array([short_s * (rng.uniform(4, 6) if c == "L" else 1) for c in pips])
    gaps_s = np.array(gaps) * rng.uniform(0.1, 0.16) * rng.uniform(0.9, 1.1, len(gaps))
    onsets = np.concatenate([[0.0], np.cumsum(lengths[:-1] + gaps_s)])
    onsets += rng.uniform(0.05, n / rate - 0.05 - onsets[-1] - lengths[-1])
    t = np.arange(n) / rate
    ramp_s = rng.uniform(0.003, 0.01)
    gate = sum(ramp(t - a, ramp_s, ramp_s, b) for a, b in zip(onsets, lengths, strict=True))
    timbre = rng.integers(4)
    if timbre == 0:
        x = np.sin(2 * np.pi * f_hz * t + rng.uniform(0, 2 * np.pi))
    elif timbre == 1:
        odd = np.arange(1.0, 10, 2)
        x = additive(np.full(n, f_hz), odd, 1 / odd, rate, rng)
    elif timbre == 2:
        x = band_noise(n, rate, [f_hz], 0.1, rng)
    else:
        mod = rng.uniform(1, 4) * np.sin(2 * np.pi * f_hz * rng.uniform(0.5, 3) * t)
        x = np.sin(2 * np.pi * f_hz * t + mod)
    return x * gate


def texture(kind: int, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Background (n,): 0 wind, 1 rain, 2 babble (formant-like noise), 3 mains hum."""
    t = np.arange(n) / rate
    steps = max(2, int(n / rate * 4))
    if kind == 0:
        x = band_noise(n, rate, rng.uniform(150, 800, steps), 0.6, rng)
        return x * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
    if kind == 1:
        drops = (rng.random(n) < rng.uniform(20, 200) / rate) * rng.uniform(0, 1, n)
        return convolve(drops, ring(rng.uniform(2000, 5000), 0.002, rate))[:n]
    if kind == 2:
        x = band_noise(n, rate, rng.uniform(300, 2500, steps), 0.2, rng)
        return x * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)) ** 2
    k = np.arange(1.0, 9)
    return additive(np.full(n, 50.0 * rng.integers(1, 3)), k, 1 / k, rate, rng)


def noise(kind: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Background noise (n,): white, pink (1/f power), brown (1/f^2) or 50 Hz hum."""
    if kind == "hum":
        k = np.arange(1.0, 7)
        return additive(np.full(n, 50.0), k, 1 / k, rate, rng) + 0.1 * rng.standard_normal(n)
    alpha = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    size = fft_size(n)
    freqs = np.maximum(np.fft.rfftfreq(size, 1 / rate), 20.0)
    # The spectrum of white Gaussian noise is complex Gaussian: shape it directly, one FFT.
    white = rng.standard_normal((len(freqs), 2)) @ np.array([1.0, 1.0j])
    return np.fft.irfft(white * freqs**-alpha, size)[:n]


def additive(
    f0: np.ndarray, ratios: Sequence[float], amps, rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Sum of partials at ``ratios`` (K,) x the pitch track ``f0`` (n,) Hz, amplitudes ``amps``
    (K,) or (K, n), random phases; partials above 0.45 x ``rate`` are dropped."""
    ratios = np.asarray(ratios, float)[:, None]  # (K, 1)
    amps = np.asarray(amps, float)
    amps = amps[:, None] if amps.ndim == 1 else amps  # (K, 1) or (K, n)
    keep = ratios[:, 0] * f0.max() < 0.45 * rate
    phase = 2 * np.pi * np.cumsum(f0) / rate  # (n,)
    start = rng.uniform(0, 2 * np.pi, (len(ratios), 1))
    if np.all(np.mod(2 * ratios, 1) == 0):
        # Ratios in halves: wrapping the base phase by 4 pi keeps every partial continuous,
        # and small angles let float32 sin (3x faster) stay exact to ~1e-4 rad.
        angles = (ratios[keep] * (phase % (4 * np.pi)) + start[keep]).astype(np.float32)
    else:
        angles = ratios[keep] * phase + start[keep]
    return (amps[keep] * np.sin(angles)).sum(axis=0)


def band_noise(
    n: int, rate: int, centres_hz: Sequence[float], width: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit-RMS noise (n,) through a Gaussian band (std ``width`` x centre) whose centre glides
    geometrically through ``centres_hz``; 512-sample frames, 50 % Hann overlap-add."""
    size, hop = 512, 256
    frames = n // hop + 2
    where = np.linspace(0, 1, frames)
    path = np.exp(np.interp(where, np.linspace(0, 1, len(centres_hz)), np.log(centres_hz)))
    freqs = np.fft.rfftfreq(size, 1 / rate)
    gain = np.exp(-0.5 * ((freqs[None] - path[:, None]) / (width * path[:, None])) ** 2)
    spectra = np.fft.rfft(rng.standard_normal((frames, size)))  # (frames, size // 2 + 1)
    y = np.fft.irfft(spectra * gain, size)  # (frames, size)
    y *= 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)
    out = np.zeros((frames + 1) * hop)
    out[: frames * hop] += y[:, :hop].ravel()
    out[hop:] += y[:, hop:].ravel()
    return out[:n] / max(np.sqrt(np.mean(out[:n] ** 2)), 1e-12)


def ring(f_hz: float, tau_s: float, rate: int) -> np.ndarray:
    """A damped sine: f_hz, time constant tau_s, 8 tau long."""
    t = np.arange(int(8 * tau_s * rate) + 1) / rate
    return np.sin(2 * np.pi * f_hz * t) * np.exp(-t / tau_s)


def ramp(
    t: np.ndarray, attack_s: float, release_s: float, length_s: float | None = None
) -> np.ndarray:
    """Gate over times ``t`` (s): linear attack from 0, flat, linear release ending at
    ``length_s`` (default: the last time); 0 outside."""
    end = t[-1] if length_s is None else length_s
    return np.clip(np.minimum(t / attack_s, (end - t) / release_s), 0.0, 1.0)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution via FFT: (len(x) + len(h) - 1,)."""
    m = len(x) + len(h) - 1
    size = fft_size(m)
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:m]


def fft_size(n: int) -> int:
    """The smallest power of two >= n (pocketfft is slow on lengths with large prime factors)."""
    return 1 << max(0, n - 1).bit_length()
