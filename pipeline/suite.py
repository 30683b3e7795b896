"""A deterministic, bundled evaluation suite: three labelled tasks and an unlabelled pool.

Tasks (``root/<task>/manifest.csv``: path, label, split, condition):

- ``events``: 1 s clips holding one short sound event; 8 classes (click, knock, clap,
  whoosh, chirp_up, chirp_down, buzz, drip), each a parametric synthesis family.
- ``instruments``: 1-2 s notes at a random pitch; 8 timbral families (flute, clarinet,
  string, pluck, bell, organ, brass, voice).
- ``rhythms``: 2 s clips of tone pips; 8 classes defined only by timing. Carrier frequency
  and pip timbre are random per clip.

A *source* is one fixed random draw of a class's synthesis parameters (for rhythms: a
carrier-frequency band); a *room* (:class:`Room`) is a recording condition: sample rate,
reverb, low-pass, background noise and level. A clip's ``condition`` is
``"<source>@<room>"``. ``train`` and ``valid`` use training sources in training rooms;
``test`` uses other sources in other rooms, so every test condition is unseen in training.
The pool (``root/pool/manifest.csv``, ``path`` only) holds 1-10 s scenes: a background
texture plus events, notes and rhythms from fresh sources, in any room.

Every random draw comes from ``numpy.random.default_rng([seed, ...])`` keyed by task, class
and clip, so the same arguments give byte-identical files (on one NumPy version).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from pipeline import sounds
from pipeline.sounds import EVENT_RANGES, EVENTS, INSTRUMENT_RANGES, INSTRUMENTS, PATTERNS

log = logging.getLogger(__name__)

CLASSES = {"events": EVENTS, "instruments": INSTRUMENTS, "rhythms": tuple(PATTERNS)}
DURATION_S = {"events": (1.0, 1.0), "instruments": (1.0, 2.0), "rhythms": (2.0, 2.0)}
"""Clip length range per task, seconds (the pool: :data:`POOL_DURATION_S`)."""
POOL_DURATION_S = (1.0, 10.0)
CLIPS_PER_CLASS = {"train": 40, "valid": 8, "test": 16}
"""Clips per class and split at ``scale=1`` (each at least 1 at any scale)."""
POOL_CLIPS = 1000
NUM_SOURCES = (4, 2)
"""Sources per class of events and instruments: (training, test)."""
TRAIN_CARRIERS_HZ = ((250.0, 400.0), (600.0, 900.0), (1400.0, 2000.0))
TEST_CARRIERS_HZ = ((400.0, 600.0), (2000.0, 3000.0))
TASK_KEYS = {"events": 1, "instruments": 2, "rhythms": 3, "pool": 4}

DESCRIPTIONS = {
    "events": "1 s clips, one short synthetic sound event each; 8 classes. Test: unseen "
    "sources (parameter draws) in unseen rooms.",
    "instruments": "1-2 s synthetic notes at random pitch; 8 timbre families. Test: unseen "
    "instruments (parameter draws) in unseen rooms.",
    "rhythms": "2 s clips of tone pips; 8 classes defined only by timing. Test: unseen "
    "carrier-frequency bands in unseen rooms.",
}


@dataclass(frozen=True, kw_only=True)
class Room:
    """A recording condition, applied after synthesis."""

    name: str
    """Id used in the ``condition`` column."""
    rate_hz: int
    """Sample rate of the written file."""
    rt60_s: float
    """Reverb decay time (60 dB); 0 means dry."""
    lowpass_hz: float | None
    """Cut-off of a 4th-order low-pass magnitude response; None means none."""
    noise: str
    """Background noise: white, pink, brown or hum (50 Hz mains harmonics)."""
    snr_db: float
    """Signal-to-noise ratio over the samples above 5 % of the peak."""
    peak_dbfs: float
    """Peak level of the clip, minus a random 0-3 dB."""


TRAIN_ROOMS = (
    Room(name="dry", rate_hz=16000, rt60_s=0.0, lowpass_hz=None, noise="white", snr_db=30,
         peak_dbfs=-3),
    Room(name="booth", rate_hz=22050, rt60_s=0.15, lowpass_hz=6000, noise="pink", snr_db=25,
         peak_dbfs=-6),
    Room(name="office", rate_hz=16000, rt60_s=0.35, lowpass_hz=None, noise="brown", snr_db=20,
         peak_dbfs=-10),
)  # fmt: skip
TEST_ROOMS = (
    Room(name="hall", rate_hz=44100, rt60_s=0.9, lowpass_hz=None, noise="pink", snr_db=15,
         peak_dbfs=-2),
    Room(name="street", rate_hz=22050, rt60_s=0.05, lowpass_hz=4000, noise="hum", snr_db=12,
         peak_dbfs=-14),
)  # fmt: skip


def write_suite(
    root: str | Path, seed: int = 0, scale: float = 1.0, pool_clips: int | None = None
) -> dict[str, Path]:
    """Write the three tasks, the pool and ``suite.yaml`` under ``root``.

    Args:
        root: output folder (created).
        seed: base of every random draw (>= 0); the same seed gives byte-identical files.
        scale: multiplies :data:`CLIPS_PER_CLASS` and :data:`POOL_CLIPS`.
        pool_clips: number of pool clips, overriding ``scale``.

    Returns:
        {"events", "instruments", "rhythms", "pool"} -> path of that manifest.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy seed sequences), got {seed}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    num_pool = round(POOL_CLIPS * scale) if pool_clips is None else pool_clips
    if num_pool < 1:
        raise ValueError(f"pool_clips must be >= 1, got {num_pool}; raise scale or pool_clips")
    root = Path(root)
    out = {task: _write_task(root, task, seed, scale) for task in CLASSES}
    out["pool"] = _write_pool(root, seed, num_pool)
    doc = {
        "tasks": {
            t: {"manifest": f"{t}/manifest.csv", "description": d, "classes": list(CLASSES[t])}
            for t, d in DESCRIPTIONS.items()
        },
        "pool": "pool/manifest.csv",
        "seed": seed,
        "scale": scale,
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, width=100))
    return out


def _write_task(root: Path, task: str, seed: int, scale: float) -> Path:
    """Render every clip of ``task`` and write its audio and manifest; returns the manifest."""
    key = TASK_KEYS[task]
    (root / task / "audio").mkdir(parents=True, exist_ok=True)
    sources = _sources(task, seed)
    rows = []
    plan = _plan(CLASSES[task], _num_sources(task), scale, _rng(seed, key, 2))
    for i, (label, split, src, room) in enumerate(plan):
        name, params = sources[label][src]
        rel = f"audio/{i:05d}.wav"
        x = _render(task, label, params, room.rate_hz, _rng(seed, key, 1, i))
        x = _record(x, room, _rng(seed, key, 3, i))
        sf.write(root / task / rel, x, room.rate_hz, subtype="PCM_16")
        rows.append((rel, label, split, f"{name}@{room.name}"))
    manifest = root / task / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "split", "condition"])
        w.writerows(rows)
    log.info("wrote %s: %d clips", manifest, len(rows))
    return manifest


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, task, purpose, index): order-independent draws."""
    return np.random.default_rng([seed, *keys])


def _num_sources(task: str) -> tuple[int, int]:
    """(training, test) sources per class of ``task``."""
    return (len(TRAIN_CARRIERS_HZ), len(TEST_CARRIERS_HZ)) if task == "rhythms" else NUM_SOURCES


def _sources(task: str, seed: int) -> dict[str, list[tuple[str, dict]]]:
    """Class -> its sources as (name, parameters), the training ones first."""
    if task == "rhythms":
        bands = TRAIN_CARRIERS_HZ + TEST_CARRIERS_HZ
        named = [(f"carrier{lo:.0f}-{hi:.0f}hz", {"band": (lo, hi)}) for lo, hi in bands]
        return {label: named for label in PATTERNS}
    ranges = EVENT_RANGES if task == "events" else INSTRUMENT_RANGES
    out = {}
    for c, label in enumerate(CLASSES[task]):
        rng = _rng(seed, TASK_KEYS[task], 0, c)
        out[label] = [(f"{label}{k}", _draw(ranges[label], rng)) for k in range(sum(NUM_SOURCES))]
    return out


def _draw(ranges: dict[str, tuple[float, float]], rng: np.random.Generator) -> dict:
    """A source: every parameter uniform in its (low, high) range."""
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in ranges.items()}


def _plan(
    labels: Sequence[str], num_sources: tuple[int, int], scale: float, rng: np.random.Generator
) -> list[tuple[str, str, int, Room]]:
    """(label, split, source index, room) of every clip: train and valid (a random 1/6 of
    them at scale 1) cycle through the training sources x training rooms, test through the
    test sources x test rooms."""
    n_train, n_valid, n_test = (max(1, round(n * scale)) for n in CLIPS_PER_CLASS.values())
    num_train, num_test = num_sources
    seen = [(s, r) for s in range(num_train) for r in TRAIN_ROOMS]
    unseen = [(s, r) for s in range(num_train, num_train + num_test) for r in TEST_ROOMS]
    rows = []
    for label in labels:
        splits = rng.permutation(["train"] * n_train + ["valid"] * n_valid)
        pick = _cycle(len(seen), n_train + n_valid, rng)
        rows += [(label, str(sp), *seen[j]) for sp, j in zip(splits, pick, strict=True)]
        rows += [(label, "test", *unseen[j]) for j in _cycle(len(unseen), n_test, rng)]
    return rows


def _cycle(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices below m, each used equally often (+-1), in random order."""
    return np.concatenate([rng.permutation(m) for _ in range(-(-n // m))])[:n]


def _render(task: str, label: str, params: dict, rate: int, rng: np.random.Generator) -> np.ndarray:
    """One dry clip (n,) at ``rate`` Hz, of the task's length."""
    lo, hi = DURATION_S[task]
    n = int(rng.uniform(lo, hi) * rate) if hi > lo else int(lo * rate)
    if task == "events":
        return _place(sounds.event(label, _jitter(params, rng), rate, rng), n, rng)
    if task == "instruments":
        start = int(rng.uniform(0.0, 0.1) * rate)
        f0 = params["f_hz"] * 2 ** (rng.uniform(-7, 7) / 12)
        note = sounds.note(label, _jitter(params, rng), f0, n - start, rate, rng)
        return np.concatenate([np.zeros(start), note])
    f_hz = np.exp(rng.uniform(*np.log(params["band"])))
    return sounds.rhythm(label, f_hz, n, rate, rng)


def _jitter(params: dict, rng: np.random.Generator) -> dict:
    """Per-clip variation of a source: every parameter times 0.93-1.07."""
    return {k: v * rng.uniform(0.93, 1.07) for k, v in params.items()}


def _place(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` at a random onset in n samples of silence (truncated if longer)."""
    out = np.zeros(n)
    start = int(rng.integers(0, max(1, n - len(x))))
    x = x[: n - start]
    out[start : start + len(x)] = x
    return out


def _write_pool(root: Path, seed: int, num_clips: int) -> Path:
    """Unlabelled 1-10 s scenes in any room; returns the manifest (``path`` only)."""
    (root / "pool" / "audio").mkdir(parents=True, exist_ok=True)
    rooms = TRAIN_ROOMS + TEST_ROOMS
    rels = []
    for i in range(num_clips):
        rng = _rng(seed, TASK_KEYS["pool"], i)
        room = rooms[int(rng.integers(len(rooms)))]
        x = _scene(int(rng.uniform(*POOL_DURATION_S) * room.rate_hz), room.rate_hz, rng)
        rels.append(f"audio/{i:05d}.wav")
        sf.write(root / "pool" / rels[-1], _record(x, room, rng), room.rate_hz, subtype="PCM_16")
    manifest = root / "pool" / "manifest.csv"
    manifest.write_text("path\n" + "".join(f"{r}\n" for r in rels))
    log.info("wrote %s: %d clips", manifest, num_clips)
    return manifest


def _scene(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A background texture plus about one foreground sound per 1.5 s, from fresh sources."""
    x = sounds.texture(int(rng.integers(4)), n, rate, rng) * rng.uniform(0.05, 0.5)
    for _ in range(rng.poisson(n / rate / 1.5)):
        kind = int(rng.integers(3))
        if kind == 0:
            label = EVENTS[int(rng.integers(len(EVENTS)))]
            s = sounds.event(label, _draw(EVENT_RANGES[label], rng), rate, rng)
        elif kind == 1:
            label = INSTRUMENTS[int(rng.integers(len(INSTRUMENTS)))]
            p = _draw(INSTRUMENT_RANGES[label], rng)
            s = sounds.note(label, p, p["f_hz"], int(rng.uniform(0.3, 2.0) * rate), rate, rng)
        else:
            label = tuple(PATTERNS)[int(rng.integers(len(PATTERNS)))]
            f_hz = np.exp(rng.uniform(np.log(200), np.log(3000)))
            s = sounds.rhythm(label, f_hz, 2 * rate, rate, rng)
        start = int(rng.integers(n))
        s = s[: n - start] / max(np.abs(s).max(), 1e-9)
        x[start : start + len(s)] += rng.uniform(0.3, 1.0) * s
    return x


def _record(x: np.ndarray, room: Room, rng: np.random.Generator) -> np.ndarray:
    """``x`` through ``room``: reverb, low-pass, background noise, peak level; float32."""
    n, rate = len(x), room.rate_hz
    if room.rt60_s > 0:
        t = np.arange(int(room.rt60_s * rate)) / rate
        ir = rng.standard_normal(len(t)) * np.exp(-6.91 * t / room.rt60_s)
        x = x + 0.6 * sounds.convolve(x, ir / np.sqrt(np.sum(ir**2)))[:n]
    if room.lowpass_hz is not None:
        size = sounds.fft_size(n + rate // 10)  # padded: the response (< 0.1 s) cannot wrap
        response = 1 / np.sqrt(1 + (np.fft.rfftfreq(size, 1 / rate) / room.lowpass_hz) ** 8)
        x = np.fft.irfft(np.fft.rfft(x, size) * response, size)[:n]
    active = np.abs(x) > 0.05 * np.abs(x).max()
    noise = sounds.noise(room.noise, n, rate, rng)
    gain = np.sqrt(np.mean(x[active] ** 2) / 10 ** (room.snr_db / 10) / np.mean(noise**2))
    y = x + gain * noise
    peak = 10 ** ((room.peak_dbfs - rng.uniform(0, 3)) / 20)
    return (y * (peak / max(np.abs(y).max(), 1e-9))).astype(np.float32)
