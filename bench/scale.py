"""Featurization at scale: per-row cost at N and 10 N rows, and a dry plan of 10 million.

    .venv/bin/python bench/scale.py                           # N = 100,000 (~25 min)
    .venv/bin/python bench/scale.py --rows 5000 --plan-rows 1000000   # a quick look

One 0.25 s clip listed N times in a manifest (so the audio work per row is fixed and only
per-row bookkeeping can grow), featurized by the Ray Data job at N and at 10 N rows, each
in its own driver process with a fresh local Ray on all cores: wall time, time per row,
the driver's peak RSS, and the object store's peak (plasma bytes in use, sampled every
second). Then the dry plan (``pipeline.featurize.plan_featurize``, what
``jobs/featurize.py --dry-run`` does: manifest in, shards out, no Ray, no audio) of a
Parquet manifest of --plan-rows distinct paths, in its own process: wall and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.sampling import PeakSampler  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plasma_mb() -> float | None:
    """MiB in use in the local object store (None: this sample was lost)."""
    from ray._private.internal_api import memory_summary

    try:
        text = memory_summary(stats_only=True)
    except Exception:  # noqa: BLE001 - a sample lost is not a failed benchmark
        return None
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return float(m.group(1)) if m else None


def featurize_child(manifest: str, out: str) -> dict:
    from jobs.kit.cluster import init_ray
    from pipeline.featurize import FeaturizeConfig, featurize

    start = time.perf_counter()
    init_ray()
    ray_s = time.perf_counter() - start
    with PeakSampler(plasma_mb, 1.0) as plasma:
        run = time.perf_counter()
        summary = featurize(manifest, out, FeaturizeConfig(max_error_fraction=0.0))
        wall = time.perf_counter() - run
    n = summary.info["num_inputs"]
    assert summary.info["num_rows"] == n, summary.info["errors_by_reason"]
    return {
        "rows": n,
        "clips_per_shard": summary.info["clips_per_shard"],
        "num_shards": summary.info["num_shards"],
        "ray_start_s": round(ray_s, 1),
        "wall_s": round(wall, 1),
        "ms_per_row": round(1e3 * wall / n, 4),
        "driver_peak_rss_mb": round(peak_rss_mb()),
        "object_store_peak_mb": plasma.peak,
    }


def plan_child(manifest: str) -> dict:
    from pipeline.featurize import FeaturizeConfig, plan_featurize

    base = peak_rss_mb()
    start = time.perf_counter()
    plan = plan_featurize(manifest, FeaturizeConfig())
    wall = time.perf_counter() - start
    return plan.summary() | {
        "plan_s": round(wall, 1),
        "driver_peak_rss_mb": round(peak_rss_mb()),
        "rss_before_mb": round(base),
    }


def one_clip_manifest(folder: Path, rows: int) -> str:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(4000) / 16000
    sf.write(folder / "clip.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000, subtype="PCM_16")
    path = folder / f"manifest_{rows}.parquet"
    pq.write_table(pa.table({"path": pa.repeat("clip.wav", rows)}), path)
    return str(path)


def distinct_manifest(folder: Path, rows: int) -> str:
    index = pa.array(np.arange(rows, dtype=np.int64)).cast(pa.string())
    paths = pc.binary_join_element_wise("clips/", index, ".wav", "")
    labels = pc.binary_join_element_wise("class", pc.cast(np.arange(rows) % 527, pa.string()), "")
    path = folder / f"plan_{rows}.parquet"
    pq.write_table(pa.table({"path": paths, "label": labels}), path)
    return str(path)


def child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="N (the run at 10 N follows)")
    ap.add_argument("--plan-rows", type=int, default=10_000_000)
    ap.add_argument("--out", default="bench/results/scale.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(featurize_child(*rest) if kind == "featurize" else plan_child(*rest)))
        return
    result: dict = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = []
        for n in (args.rows, 10 * args.rows):
            manifest = one_clip_manifest(tmp / "data", n)
            runs.append(child(["featurize", manifest, str(tmp / f"out_{n}")]))
            print(json.dumps(runs[-1]), flush=True)
        small, large = runs
        result["featurize"] = runs
        result["per_row_ratio_10n_vs_n"] = round(large["ms_per_row"] / small["ms_per_row"], 3)
        result["driver_rss_ratio_10n_vs_n"] = round(
            large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3
        )
        result["plan"] = child(["plan", distinct_manifest(tmp, args.plan_rows)])
        print(json.dumps(result["plan"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
