"""Pretraining step throughput: one-pass MSPM vs the original's two passes, side by side.

    .venv/bin/python bench/pretrain_step.py                # tiny patch, batch 8, 1024x128, M=400
    .venv/bin/python bench/pretrain_step.py --size small --batch 4

Reports samples/s of a full training step (forward, backward, AdamW) for the single-pass
mode and ``two_pass`` (the faithful baseline), measured interleaved in one process; the
machine's fp32 matmul GFLOP/s; the step's achieved model GFLOP/s and its share of the
matmul rate; and the peak resident memory of each mode (each in a fresh child process).

FLOPs are counted analytically per sample and encoder pass (multiply-add = 2 FLOPs,
backward = 2x forward): patch projection 2*N*P*D, blocks L*(24*S*D^2 + 4*S^2*D) with
S = N + C tokens, both pretext heads 2*2*M*(D^2 + D*P) and the InfoNCE scores 2*M^2*P.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssast import SSAST, SSASTConfig


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """Best-of-3 fp32 GEMM rate of this machine with torch's default threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def step_flops_per_sample(cfg: SSASTConfig, two_pass: bool) -> float:
    """Forward + backward FLOPs of one training step, per clip (see module docstring)."""
    p = cfg.preset
    N, P, D, M, L = cfg.num_patches, cfg.patch_dim, p.embed_dim, cfg.num_masked, p.depth
    S = N + p.num_extra_tokens
    fwd = 2 * N * P * D + L * (24 * S * D * D + 4 * S * S * D)
    fwd += 2 * 2 * M * (D * D + D * P) + 2 * M * M * P
    return 3 * fwd * (2 if two_pass else 1)


def make_step(
    model: SSAST, opt: torch.optim.Optimizer, x: torch.Tensor, two_pass: bool, gen: torch.Generator
):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model.pretrain_loss(x, two_pass=two_pass, generator=gen)
        out["loss"].backward()
        opt.step()

    return step


def build(args) -> tuple[SSAST, torch.optim.Optimizer, torch.Tensor, torch.Generator]:
    torch.manual_seed(0)
    cfg = SSASTConfig.from_geometry(
        args.geometry, size=args.size, input_tdim=args.frames, num_masked=args.masked
    )
    model = SSAST(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)
    x = torch.randn(args.batch, args.frames, 128)
    return model, opt, x, torch.Generator().manual_seed(0)


def peak_rss_child(args, mode: str) -> float:
    """Peak RSS (MiB) of a fresh process running a few steps of one mode."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--size",
        args.size,
        "--geometry",
        args.geometry,
        "--batch",
        str(args.batch),
        "--frames",
        str(args.frames),
        "--masked",
        str(args.masked),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def child(args) -> None:
    # A forked child starts with its parent's RSS high-water mark; reset it (Linux: "5"
    # to clear_refs resets VmHWM) so the figure is this mode's own peak.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    model, opt, x, gen = build(args)
    step = make_step(model, opt, x, args.child == "two_pass", gen)
    for _ in range(3):
        step()
    print(_peak_rss_mib())


def _peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--geometry", default="patch", choices=["patch", "frame"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--masked", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per mode")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--out", default="bench/results/pretrain_step.json")
    ap.add_argument("--child", choices=["single", "two_pass"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    modes = {"single": False, "two_pass": True}
    peak = {m: peak_rss_child(args, m) for m in modes}  # before this process grows
    gemm = matmul_gflops()
    model, opt, x, gen = build(args)
    steps = {m: make_step(model, opt, x, tp, gen) for m, tp in modes.items()}
    for s in steps.values():  # warm-up: allocator, thread pools, kernels
        s()
        s()
    per_step: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m, s in steps.items():
            for _ in range(args.steps):
                t = time.perf_counter()
                s()
                per_step[m].append(time.perf_counter() - t)
    result = {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "matmul_gflops": gemm,
        "config": vars(args) | {"child": None},
    }
    for m, tp in modes.items():
        sec = statistics.median(per_step[m])
        flops = step_flops_per_sample(model.cfg, tp)
        result[m] = {
            "samples_per_s": args.batch / sec,
            "ms_per_step": 1e3 * sec,
            "gflop_per_sample": flops / 1e9,
            "achieved_gflops": flops * args.batch / sec / 1e9,
            "share_of_matmul": flops * args.batch / sec / 1e9 / gemm,
            "peak_rss_mib": peak[m],
        }
    result["speedup_single_vs_two_pass"] = (
        result["single"]["samples_per_s"] / result["two_pass"]["samples_per_s"]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"machine: {result['cpus']} cpus, {result['threads']} torch threads, "
        f"fp32 matmul {gemm:.1f} GFLOP/s"
    )
    print(
        f"{'mode':<10}{'samples/s':>10}{'ms/step':>10}{'GFLOP/smp':>11}{'GFLOP/s':>9}"
        f"{'of matmul':>11}{'peak RSS':>10}"
    )
    for m in modes:
        r = result[m]
        print(
            f"{m:<10}{r['samples_per_s']:>10.2f}{r['ms_per_step']:>10.0f}"
            f"{r['gflop_per_sample']:>11.1f}{r['achieved_gflops']:>9.1f}"
            f"{r['share_of_matmul']:>10.0%}{r['peak_rss_mib']:>8.0f}MiB"
        )
    print(
        f"single-pass / two-pass samples/s: {result['speedup_single_vs_two_pass']:.2f}x "
        f"(written to {args.out})"
    )


if __name__ == "__main__":
    main()
