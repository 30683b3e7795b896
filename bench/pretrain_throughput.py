"""Pretraining throughput of the Ray Train job vs the bare training step, in one run.

    .venv/bin/python bench/pretrain_throughput.py
    .venv/bin/python bench/pretrain_throughput.py --steps 60 --frames 1024

Tiny patch model on the generated sample corpus (featurized first). Measures, side by
side: (1) the bare single-process step (forward, backward, Adam; the model-core
benchmark's loop) with 1 thread and with all threads; (2) jobs/pretrain.py's Ray Train
run with 1 worker x 1 CPU and 2 workers x 1 CPU. Job figures are steady state: the
intervals after the first (which includes start-up). Reports samples/s, the overhead of
Ray Train against the bare step at equal CPUs, and the data-wait fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the jobs/ package

import mlflow  # noqa: E402
import torch  # noqa: E402

from jobs.kit.config import load_config  # noqa: E402
from jobs.pretraining.config import PretrainConfig  # noqa: E402
from jobs.pretraining.driver import run_pretraining  # noqa: E402
from pipeline.featurize import FeaturizeConfig, featurize  # noqa: E402
from pipeline.synth import write_corpus  # noqa: E402
from ssast import SSAST, SSASTConfig  # noqa: E402


def bare_step(batch: int, frames: int, masked: int, threads: int, steps: int) -> float:
    """Samples/s of the plain loop: same model, optimizer and objective, random input."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SSAST(SSASTConfig(size="tiny", input_tdim=frames, num_masked=masked)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)
    x = torch.randn(batch, frames, 128)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x, generator=gen)["loss"].backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def job(data: str, tmp: Path, workers: int, args, uri: str) -> dict[str, float]:
    cfg = load_config(
        PretrainConfig,
        None,
        [
            f"model.input_tdim={args.frames}",
            f"model.num_masked={args.masked}",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            "train.log_every=5",
            f"train.checkpoint_every={args.steps}",
            "train.image_every=0",
            "optim.warmup_steps=5",
            f"scaling.num_workers={workers}",
            "scaling.cpus_per_worker=1",
            f"mlflow.tracking_uri={uri}",
            f"name=w{workers}",
        ],
    )
    result = run_pretraining(data, str(tmp / f"run{workers}"), cfg)
    client = mlflow.MlflowClient(uri)
    speed = [
        m.value for m in client.get_metric_history(result.mlflow_run_id, "perf/samples_per_s")
    ][1:]
    wait = [
        m.value for m in client.get_metric_history(result.mlflow_run_id, "perf/data_wait_fraction")
    ][1:]
    return {"samples_per_s": statistics.median(speed), "data_wait_fraction": max(wait)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=140)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--masked", type=int, default=200)
    ap.add_argument("--out", default="bench/results/pretrain_throughput.json")
    args = ap.parse_args()
    import ray

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "4")
        # Logical CPUs: Train workers take 1 each, Ray Data needs some to feed them.
        ray.init(num_cpus=cpus + 2, include_dashboard=False, log_to_driver=False)
        manifest = write_corpus(tmp / "corpus", num_clips=args.clips)
        featurize(str(manifest), str(tmp / "ds"), FeaturizeConfig(clips_per_shard=32))
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        res = {
            "bare_1_thread": bare_step(args.batch, args.frames, args.masked, 1, 10),
            "bare_all_threads": bare_step(args.batch, args.frames, args.masked, cpus, 10),
        }
        res["job_1_worker"] = job(str(tmp / "ds"), tmp, 1, args, uri)
        res["job_2_workers"] = job(str(tmp / "ds"), tmp, 2, args, uri)
        ray.shutdown()
    one, two = res["job_1_worker"], res["job_2_workers"]
    res["overhead_1_worker_vs_bare_1_thread"] = 1 - one["samples_per_s"] / res["bare_1_thread"]
    res["speedup_2_workers_vs_1"] = two["samples_per_s"] / one["samples_per_s"]
    res["config"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(
        f"tiny patch, batch {args.batch}/worker, {args.frames} frames, M={args.masked}, {cpus} cpus"
    )
    print(f"bare step, 1 thread          {res['bare_1_thread']:7.2f} samples/s")
    print(f"bare step, {cpus} threads         {res['bare_all_threads']:7.2f} samples/s")
    print(
        f"Ray Train, 1 worker x 1 CPU  {one['samples_per_s']:7.2f} samples/s  "
        f"overhead {res['overhead_1_worker_vs_bare_1_thread']:+.1%}  "
        f"data wait {one['data_wait_fraction']:.1%}"
    )
    print(
        f"Ray Train, 2 workers x 1 CPU {two['samples_per_s']:7.2f} samples/s  "
        f"{res['speedup_2_workers_vs_1']:.2f}x 1 worker  "
        f"data wait {two['data_wait_fraction']:.1%}"
    )


if __name__ == "__main__":
    main()
