"""Peak memory of featurizing one long recording, by length: a task's memory should not
grow with the recording (issue: a 30 min 44.1 kHz stereo file took 2 GB).

    .venv/bin/python bench/long_recording.py                 # 5, 15 and 30 min
    .venv/bin/python bench/long_recording.py --minutes 30 --segment-s 10

Each measurement runs featurize_table on one generated 16-bit 44.1 kHz stereo WAV in a
fresh process and reports its peak RSS above the RSS after imports (the task's own
memory), the wall time and the input size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

CHILD = """
import json, resource, sys, time
import pyarrow as pa
from pipeline.clips import featurize_table
from pipeline.features import FeatureConfig
path, segment = sys.argv[1], (float(sys.argv[2]) or None)
rows = pa.table({"path": [path], "uri": [path]})
featurize_table(rows.slice(0, 0), FeatureConfig())  # imports and lazy set-up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import psutil
rss0 = psutil.Process().memory_info().rss
t = time.perf_counter()
features, errors = featurize_table(rows, FeatureConfig(segment_s=segment))
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_above_start_mb": (peak - rss0) / 2**20, "wall_s": wall,
                  "rows": features.num_rows, "errors": errors.num_rows}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 15, 30])
    ap.add_argument("--segment-s", type=float, default=0.0, help="0: whole clips")
    ap.add_argument("--out", default="bench/results/long_recording.json")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"{minutes:g}min.wav"
            rng = np.random.default_rng(0)
            with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as f:
                for _ in range(int(minutes * 60 / 10)):  # written 10 s at a time
                    f.write((0.1 * rng.standard_normal((441000, 2))).astype(np.float32))
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(args.segment_s)],
                capture_output=True,
                text=True,
                check=True,
                env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": ""},
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r |= {"minutes": minutes, "file_mb": path.stat().st_size / 2**20}
            results.append(r)
            print(
                f"{minutes:5g} min ({r['file_mb']:.0f} MB WAV, segment_s {args.segment_s:g}): "
                f"peak {r['peak_above_start_mb']:.0f} MB above start, {r['wall_s']:.1f} s, "
                f"{r['rows']} rows"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
