"""The exported tiny classifier side by side: torch eager vs onnxruntime vs the Hugging Face
model (transformers' ASTForAudioClassification), in one run.

    .venv/bin/python bench/export.py            # 1 s and 10 s inputs, 1 thread and all cores

For each input length (1 s = 98 frames and 10 s = 998 frames, the model built at that
length) and thread count: batch-1 latency (median of --reps calls after warm-up) and
batch-32 throughput (clips/s). The three runtimes compute the same logits (checked to
1e-4 before timing). Peak RSS of the process is in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the jobs/ package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jobs.kit.export import export_model  # noqa: E402
from jobs.kit.models import contract  # noqa: E402
from pipeline.features import FeatureConfig  # noqa: E402
from pipeline.labels import LabelSet  # noqa: E402
from pipeline.normalization import Normalization  # noqa: E402
from ssast import SSASTClassifier, SSASTConfig, save_checkpoint  # noqa: E402

LENGTHS = {"1s": 98, "10s": 998}


def timed(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def runtimes(tmp: Path, frames: int):
    """{name: (batch -> logits)} of one freshly exported tiny classifier."""
    import onnxruntime as ort
    from transformers import ASTForAudioClassification

    torch.manual_seed(0)
    cfg = SSASTConfig(size="tiny", input_tdim=frames, patch_stride=(10, 10), num_masked=1)
    clf = SSASTClassifier(cfg, 10, pooling="cls").eval()
    ckpt = tmp / f"clf{frames}.pt"
    names = tuple(f"c{k}" for k in range(10))
    extra = contract(FeatureConfig(), Normalization(-4.27, 4.57)) | {
        "task": LabelSet(names).to_dict()
    }
    save_checkpoint(clf, ckpt, extra=extra)
    export_model(str(ckpt), "onnx", str(tmp / f"onnx{frames}"))
    export_model(str(ckpt), "hf", str(tmp / f"hf{frames}"))
    hf = ASTForAudioClassification.from_pretrained(tmp / f"hf{frames}").eval()

    def session(threads: int):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(
            str(tmp / f"onnx{frames}" / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )

    def torch_fn(model):
        def run(x):
            with torch.inference_mode():
                out = model(torch.from_numpy(x))
            return getattr(out, "logits", out).numpy()

        return run

    return {
        "torch eager": lambda threads: torch_fn(clf),
        "onnxruntime": lambda threads: (lambda s: lambda x: s.run(None, {"fbank": x})[0])(
            session(threads)
        ),
        "hf transformers": lambda threads: torch_fn(hf),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="bench/results/export.json")
    args = ap.parse_args()
    all_cores = os.cpu_count() or 1
    results = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for length, frames in LENGTHS.items():
            makers = runtimes(Path(tmp), frames)
            one = rng.standard_normal((1, frames, 128)).astype(np.float32)
            many = rng.standard_normal((32, frames, 128)).astype(np.float32)
            for threads in sorted({1, all_cores}):
                torch.set_num_threads(threads)
                fns = {name: make(threads) for name, make in makers.items()}
                want = fns["torch eager"](many[:4])
                for fn in fns.values():
                    np.testing.assert_allclose(fn(many[:4]), want, atol=1e-4, rtol=0)
                for name, fn in fns.items():
                    latency = timed(lambda fn=fn, x=one: fn(x), args.reps)
                    batch = timed(lambda fn=fn, x=many: fn(x), max(3, args.reps // 10))
                    row = {
                        "input": length,
                        "threads": threads,
                        "runtime": name,
                        "batch1_latency_ms": 1e3 * latency,
                        "batch32_clips_per_s": 32 / batch,
                    }
                    results.append(row)
                    print(
                        f"{length:>4} {threads} thread(s) {name:<16} batch-1 "
                        f"{row['batch1_latency_ms']:7.2f} ms   batch-32 "
                        f"{row['batch32_clips_per_s']:7.1f} clips/s",
                        flush=True,
                    )
    base = {(r["input"], r["threads"]): r for r in results if r["runtime"] == "torch eager"}
    print("\nratios against torch eager (same input and threads):")
    for r in results:
        if r["runtime"] == "torch eager":
            continue
        b = base[(r["input"], r["threads"])]
        r["latency_speedup"] = b["batch1_latency_ms"] / r["batch1_latency_ms"]
        r["throughput_ratio"] = r["batch32_clips_per_s"] / b["batch32_clips_per_s"]
        print(
            f"{r['input']:>4} {r['threads']} thread(s) {r['runtime']:<16} batch-1 "
            f"{r['latency_speedup']:.2f}x faster, batch-32 {r['throughput_ratio']:.2f}x"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": results, "peak_rss_mb": peak}, indent=2))


if __name__ == "__main__":
    main()
