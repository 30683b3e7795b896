"""The exported tiny classifier side by side: torch eager vs onnxruntime vs the Hugging Face
model (transformers' ASTForAudioClassification), in one run.

    .venv/bin/python bench/export.py            # 1 s and 10 s inputs, 1 thread and all cores

For each input length (1 s = 98 frames and 10 s = 998 frames, the model built at that
length) and thread count: batch-1 latency (median of --reps calls after warm-up) and
batch-32 throughput (clips/s). The three runtimes compute the same logits (checked to
1e-4 before timing). Peak RSS of the process is in the output.

The ceiling: each batch-1 latency is also given as GFLOP/s (the forward pass's
multiply-adds, counted from the shapes) and as a share of this machine's float32 matmul
peak (the faster of torch.mm and onnxruntime's MatMul on 1024 x 1024 matrices, same
threads). No float32 runtime beats eager torch by more than 1 / (eager's share).
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


def tiny_config(frames: int) -> SSASTConfig:
    return SSASTConfig(size="tiny", input_tdim=frames, patch_stride=(10, 10), num_masked=1)


def forward_gflop(cfg: SSASTConfig) -> float:
    """GFLOP (2 per multiply-add) of one clip's forward pass: per block 12 N D^2 (qkv,
    projection, MLP of 4 D) + 2 N^2 D (scores, weighted sum) multiply-adds over N tokens,
    plus the patch embedding; softmax, norms and GELU not counted."""
    N = cfg.num_patches + cfg.preset.num_extra_tokens
    D, kernel = cfg.preset.embed_dim, cfg.patch_dim
    blocks = cfg.preset.depth * (12 * N * D * D + 2 * N * N * D)
    return 2 * (blocks + cfg.num_patches * kernel * D) / 1e9


def matmul_peak(threads: int, reps: int = 20, n: int = 1024) -> dict[str, float]:
    """GFLOP/s of an n x n float32 matmul: torch.mm and onnxruntime's MatMul."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    ta = torch.from_numpy(a)
    flop = 2 * n**3 / 1e9
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return {
        "torch.mm": flop / timed(lambda: torch.mm(ta, ta), reps),
        "onnxruntime MatMul": flop / timed(lambda: s.run(None, {"a": a, "b": a}), reps),
    }


def runtimes(tmp: Path, frames: int):
    """{name: (batch -> logits)} of one freshly exported tiny classifier."""
    import onnxruntime as ort
    from transformers import ASTForAudioClassification

    torch.manual_seed(0)
    cfg = tiny_config(frames)
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
    results, peaks = [], {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for length, frames in LENGTHS.items():
            makers = runtimes(Path(tmp), frames)
            one = rng.standard_normal((1, frames, 128)).astype(np.float32)
            many = rng.standard_normal((32, frames, 128)).astype(np.float32)
            gflop = forward_gflop(tiny_config(frames))
            for threads in sorted({1, all_cores}):
                torch.set_num_threads(threads)
                if threads not in peaks:
                    peaks[threads] = matmul_peak(threads)
                    print(
                        f"float32 matmul peak, {threads} thread(s): "
                        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks[threads].items()),
                        flush=True,
                    )
                peak = max(peaks[threads].values())
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
                        "batch1_gflop_per_s": gflop / latency,
                        "batch1_share_of_matmul_peak": gflop / latency / peak,
                    }
                    results.append(row)
                    print(
                        f"{length:>4} {threads} thread(s) {name:<16} batch-1 "
                        f"{row['batch1_latency_ms']:7.2f} ms ({row['batch1_gflop_per_s']:.1f} "
                        f"GFLOP/s, {100 * row['batch1_share_of_matmul_peak']:.0f} % of the "
                        f"matmul peak)   batch-32 {row['batch32_clips_per_s']:7.1f} clips/s",
                        flush=True,
                    )
    base = {(r["input"], r["threads"]): r for r in results if r["runtime"] == "torch eager"}
    for (length, threads), b in base.items():
        print(
            f"{length:>4} {threads} thread(s): a float32 runtime can be at most "
            f"{1 / b['batch1_share_of_matmul_peak']:.2f}x faster than torch eager at batch 1"
        )
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
    Path(args.out).write_text(
        json.dumps(
            {"rows": results, "matmul_peak_gflop_per_s": peaks, "peak_rss_mb": peak}, indent=2
        )
    )


if __name__ == "__main__":
    main()
