"""Featurization throughput: original-style loop vs our featurizer vs the Ray Data job.

    .venv/bin/python bench/featurize.py               # 64 clips of 10 s, 44.1 kHz FLAC
    .venv/bin/python bench/featurize.py --clips 128 --grow 10

Over the same generated set, in one run:
(a) the original SSAST loader's per-clip work in a loop, one core: decode (soundfile;
    torchaudio.load needs FFmpeg/torchcodec here), torchaudio.functional.resample to
    16 kHz, mean removal, torchaudio.compliance.kaldi.fbank, pad/crop to 1024, normalise;
(b) our featurizer function (pipeline.clips.featurize_table) on one core: fetch, decode,
    soxr resample, batched fbank, Arrow rows;
(c) the full Ray Data job (pipeline.featurize.featurize) on all cores, writing Parquet.
Then (c) again on a set --grow times larger, to compare peak memory (sum of RSS over
the driver and all Ray processes, sampled every 0.2 s).

Two ceilings put the ratios in context: decoding alone (soundfile, one core) bounds
(b) / (a), since every featurizer that reads these files pays it; and (b) run in one plain
process per core at once (multiprocessing, no Ray) measures how far this machine's cores
scale this memory-heavy work, which bounds (c) / (b).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import soxr
import torch
import torchaudio
from torchaudio.compliance import kaldi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bench package
from bench.sampling import PeakSampler  # noqa: E402
from pipeline.clips import featurize_table
from pipeline.features import FeatureConfig
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.manifest import read_manifest
from pipeline.storage import write_parquet
from pipeline.synth import write_corpus

FLAC_44K = (("flac", "FLAC", "PCM_16"),)


def make_set(root: Path, clips: int, seed: int) -> Path:
    return write_corpus(
        root,
        num_clips=clips,
        duration_s=(10.0, 10.0),
        seed=seed,
        broken=False,
        rates_hz=(44100,),
        formats=FLAC_44K,
    )


def original_loop(uris: list[str]) -> float:
    """(a): seconds for the original loader's work on every clip, one thread."""
    start = time.perf_counter()
    for uri in uris:
        samples, rate = sf.read(uri, dtype="float32", always_2d=True)
        wave = torch.from_numpy(samples.T.copy())
        wave = torchaudio.functional.resample(wave, rate, 16000)
        wave = wave - wave.mean()
        fb = kaldi.fbank(
            wave,
            htk_compat=True,
            sample_frequency=16000,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=10,
        )
        fb = torch.nn.functional.pad(fb, (0, 0, 0, max(0, 1024 - fb.shape[0])))[:1024]
        _ = (fb + 4.2677393) / (2 * 4.5689974)
    return time.perf_counter() - start


def our_function(manifest: Path) -> float:
    """(b): seconds for featurize_table over the whole manifest, one thread."""
    rows = read_manifest(str(manifest))
    start = time.perf_counter()
    for k in range(0, rows.num_rows, 16):
        featurize_table(rows.slice(k, 16), FeatureConfig())
    return time.perf_counter() - start


def decode_only(uris: list[str]) -> float:
    """Seconds to read and decode every clip (no resampling, no features), one thread."""
    start = time.perf_counter()
    for uri in uris:
        with open(uri, "rb") as f:
            sf.read(io.BytesIO(f.read()), dtype="float32", always_2d=True)
    return time.perf_counter() - start


def profile_stages(manifest: Path) -> dict[str, float]:
    """Milliseconds per clip of each stage of the featurizer, one thread, stage by stage
    over every clip (the same calls featurize_table makes), then the whole function; the
    rest of its time (row bookkeeping, checks, Arrow columns) is ``other``. Parquet write
    and statistics are the shard task's work after featurize_table."""
    from pipeline.audio import open_audio, read_blocks
    from pipeline.clips import extractor_for
    from pipeline.features import finish_waveform, mix_channels
    from pipeline.featurize import _shard_stats

    cfg = FeaturizeConfig(clips_per_shard=16)
    rows = read_manifest(str(manifest))
    uris = rows.column("uri").to_pylist()
    extract = extractor_for(cfg.features)
    t: dict[str, float] = dict.fromkeys(["read", "decode", "mix", "resample", "dc_pad", "fbank"], 0)
    for uri in uris:
        t0 = time.perf_counter()
        with open(uri, "rb") as f:
            data = f.read()
        t1 = time.perf_counter()
        with open_audio(data) as f:
            rate = f.samplerate
            x = np.concatenate(list(read_blocks(f, 0, f.frames)))
        t2 = time.perf_counter()
        mono = mix_channels(x, cfg.features)
        t3 = time.perf_counter()
        mono = soxr.resample(mono, rate, 16000, quality=cfg.features.resample_quality)
        t4 = time.perf_counter()
        wave = finish_waveform(mono, cfg.features, owned=True)
        t5 = time.perf_counter()
        extract([wave], half=True)
        t6 = time.perf_counter()
        for key, a, b in zip(t, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True):
            t[key] += b - a
    start = time.perf_counter()
    tables = [featurize_table(rows.slice(k, 16), cfg.features) for k in range(0, len(uris), 16)]
    total = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for k, (features, _) in enumerate(tables):
            write_parquet(features, f"{tmp}/part-{k}.parquet")
        t["parquet_write"] = time.perf_counter() - start
    start = time.perf_counter()
    for k, (features, errors) in enumerate(tables):
        _shard_stats(k, rows.slice(16 * k, 16), features, errors, cfg)
    t["statistics"] = time.perf_counter() - start
    n = len(uris)
    out = {f"{k}_ms": 1e3 * v / n for k, v in t.items()}
    out["featurize_table_ms"] = 1e3 * total / n
    staged = sum(t[k] for k in ("read", "decode", "mix", "resample", "dc_pad", "fbank"))
    out["other_ms"] = 1e3 * (total - staged) / n
    return out


def job_work(manifest: Path) -> float:
    """Seconds for the Ray job's whole per-shard work (the same ``_process_shards``:
    featurize, Parquet features and errors, statistics, marker) over 8-clip shards, one
    process, no Ray."""
    from pipeline.featurize import _process_shards

    rows = read_manifest(str(manifest))
    cfg = FeaturizeConfig(clips_per_shard=8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for k in range(0, rows.num_rows, 8):
            _process_shards(rows.slice(k, 8), cfg=cfg, root=tmp, num_inputs=rows.num_rows)
        return time.perf_counter() - start


def _function_worker(manifest: str, queue, whole_job: bool) -> None:
    torch.set_num_threads(1)
    work = job_work if whole_job else our_function
    work(Path(manifest))  # warm-up: imports, mel banks, page cache
    queue.put(work(Path(manifest)))


def plain_processes(manifest: Path, num_procs: int, whole_job: bool = False) -> float:
    """Clips/s of (b) (or, ``whole_job``, of the job's whole per-shard work) run in
    ``num_procs`` plain processes at once, each on the whole set."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_function_worker, args=(str(manifest), queue, whole_job))
        for _ in range(num_procs)
    ]
    for p in procs:
        p.start()
    seconds = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    n = read_manifest(str(manifest)).num_rows
    return sum(n / t for t in seconds)


def tree_rss() -> int:
    """Summed RSS of this process and all its descendants, bytes."""
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def ray_job(manifest: Path, out: Path) -> tuple[float, int]:
    with PeakSampler(tree_rss, 0.2) as rss:
        start = time.perf_counter()
        featurize(str(manifest), str(out), FeaturizeConfig(clips_per_shard=8))
        elapsed = time.perf_counter() - start
    return elapsed, int(rss.peak or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--grow", type=int, default=10)
    ap.add_argument("--out", default="bench/results/featurize.json")
    args = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = make_set(tmp / "small", args.clips, seed=1)
        large = make_set(tmp / "large", args.clips * args.grow, seed=2)
        uris = read_manifest(str(small)).column("uri").to_pylist()
        torch.set_num_threads(1)
        original_loop(uris[:4])  # warm-up (imports, kernels)
        our_function(small)
        t_a = original_loop(uris)
        t_b = our_function(small)
        t_decode = decode_only(uris)
        profile = profile_stages(small)
        cpus = os.cpu_count() or 1
        b_all_procs = plain_processes(small, cpus)
        job_all_procs = plain_processes(small, cpus, whole_job=True)
        torch.set_num_threads(os.cpu_count() or 1)
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "4")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_job(small, tmp / "warm")  # start worker processes once
        t_c, peak_small = ray_job(small, tmp / "out_small")
        t_c_large, peak_large = ray_job(large, tmp / "out_large")
        ray.shutdown()
    n = args.clips
    result = {
        "clips": n,
        "clip_seconds": 10.0,
        "source": "44.1 kHz FLAC",
        "cpus": os.cpu_count(),
        "a_original_loop_clips_per_s_per_core": n / t_a,
        "b_our_function_clips_per_s_one_core": n / t_b,
        "c_ray_job_clips_per_s_all_cores": n / t_c,
        "c_ray_job_large_clips_per_s": n * args.grow / t_c_large,
        "c_large_over_b": t_b * args.grow / t_c_large,
        "b_over_a": t_a / t_b,
        "c_over_b": t_b / t_c,
        "decode_only_clips_per_s_one_core": n / t_decode,
        "ceiling_b_over_a_decode_bound": t_a / t_decode,
        "b_plain_processes_all_cores_clips_per_s": b_all_procs,
        "ceiling_c_over_b_plain_processes": b_all_procs * t_b / n,
        "same_work_plain_processes_clips_per_s": job_all_procs,
        "c_over_same_work_plain_processes": n / t_c / job_all_procs,
        "c_large_over_same_work_plain_processes": n * args.grow / t_c_large / job_all_procs,
        "peak_rss_mib_small": peak_small / 2**20,
        "peak_rss_mib_large": peak_large / 2**20,
        "peak_growth": peak_large / peak_small,
        "profile_ms_per_clip_one_core": profile,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{n} clips of 10 s, 44.1 kHz FLAC, {os.cpu_count()} cpus")
    print(f"(a) original-style loop, 1 core   {n / t_a:8.1f} clips/s")
    print(f"(b) our featurizer, 1 core        {n / t_b:8.1f} clips/s   {t_a / t_b:.2f}x (a)")
    print(f"(c) Ray Data job, all cores       {n / t_c:8.1f} clips/s   {t_b / t_c:.2f}x (b)")
    print(
        f"(c) on {args.grow}x the input          {n * args.grow / t_c_large:8.1f} clips/s   "
        f"{t_b * args.grow / t_c_large:.2f}x (b)"
    )
    print(
        f"decoding alone, 1 core            {n / t_decode:8.1f} clips/s   ceiling of "
        f"(b)/(a): {t_a / t_decode:.2f}x"
    )
    print(
        f"(b) in {cpus} plain processes        {b_all_procs:8.1f} clips/s   ceiling of "
        f"(c)/(b) on this machine: {b_all_procs * t_b / n:.2f}x"
    )
    print(
        f"the job's whole work in {cpus} plain processes {job_all_procs:8.1f} clips/s: (c) is "
        f"{n / t_c / job_all_procs:.0%}, on {args.grow}x the input "
        f"{n * args.grow / t_c_large / job_all_procs:.0%}"
    )
    print(
        f"peak RSS (c): {peak_small / 2**20:.0f} MiB -> {peak_large / 2**20:.0f} MiB on "
        f"{args.grow}x input ({peak_large / peak_small:.2f}x)"
    )


if __name__ == "__main__":
    main()
