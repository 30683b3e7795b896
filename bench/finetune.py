"""Fine-tuning and prediction throughput, side by side in one run.

    .venv/bin/python bench/finetune.py
    .venv/bin/python bench/finetune.py --clips 1400 --epochs 4

Tiny patch model on the generated labelled corpus (7 classes), featurized first, with
jobs/configs/finetune_sample.yaml (256 frames, batch 8 per worker). Measures:

1. Fine-tuning samples/s of jobs/finetune.py's Ray Train run with 1 and 2 workers x 1 CPU:
   the per-epoch ``perf/train_samples_per_s`` from MLflow (the training pass of an epoch;
   every worker also scores the whole valid split, which does not get faster with more
   workers), median over the epochs after the first.
2. Prediction clips/s over the same clips, from the audio manifest (new audio: decode,
   resample, fbank, model) and from the featurized dataset (read, model):
   (a) a plain single-process loop: the featurizer's own functions (``featurize_table``)
       or pyarrow reads of the shards, pad/crop and normalise (the same
       ``ModelInput.prepare``), the model in batches of 32 under ``torch.no_grad``; with 1
       torch thread and with all threads; model loading excluded, one warm-up batch;
   (b) jobs/predict.py's Ray Data job (``run_prediction``) with 2 actors x 1 CPU, end to
       end as a user runs it (read, decode, predict, write predictions and errors, model
       broadcast and actor start-up included).
   (c) the steady state of (b): the job on the same input twice over, minus the job on
       the input, gives the clips/s of the extra clips alone (what a large collection
       runs at) and the fixed start-up cost.
   Ratios are (b) and (c) over (a).
Peak RSS is the driver's (ru_maxrss); Ray worker processes are not included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the jobs/ package

import mlflow  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from jobs.finetuning.config import FinetuneConfig  # noqa: E402
from jobs.finetuning.driver import run_finetuning  # noqa: E402
from jobs.inference.config import PredictConfig
from jobs.inference.driver import run_prediction  # noqa: E402
from jobs.kit.config import load_config  # noqa: E402
from pipeline.batches import ModelInput  # noqa: E402
from pipeline.clips import featurize_table  # noqa: E402
from pipeline.features import FeatureConfig  # noqa: E402
from pipeline.featurize import FeaturizeConfig, featurize  # noqa: E402
from pipeline.manifest import read_manifest  # noqa: E402
from pipeline.normalization import Normalization  # noqa: E402
from pipeline.schema import load_dataset_info  # noqa: E402
from pipeline.synth import write_corpus  # noqa: E402
from ssast import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def finetune(data: str, tmp: Path, workers: int, args, uri: str) -> tuple[float, str]:
    """(steady-state samples/s, model.pt) of a fine-tuning run with ``workers`` workers."""
    cfg = load_config(
        FinetuneConfig,
        ROOT / "jobs" / "configs" / "finetune_sample.yaml",
        [
            f"model.input_tdim={args.frames}",
            f"train.max_epochs={args.epochs}",
            f"scaling.num_workers={workers}",
            "scaling.cpus_per_worker=1",
            f"mlflow.tracking_uri={uri}",
            f"name=w{workers}",
        ],
    )
    result = run_finetuning(data, str(tmp / f"ft{workers}"), cfg)
    history = mlflow.MlflowClient(uri).get_metric_history(
        result.mlflow_run_id, "perf/train_samples_per_s"
    )
    speeds = [m.value for m in sorted(history, key=lambda m: m.step)][1:]
    return statistics.median(speeds), f"{result.output}/model.pt"


def predict_loop(model_path: str, source: str, threads: int, batch: int = 32) -> float:
    """Clips/s of the plain single-process loop over every clip of ``source``: a
    featurized dataset (read Parquet, pad/crop, normalise, model) or a manifest (also
    decode, resample and fbank each clip, with the featurizer's own functions)."""
    torch.set_num_threads(threads)
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    model = load_checkpoint(payload).eval()
    mean, std = payload["task"]["normalization"]
    prepare = ModelInput(model.cfg.input_tdim, Normalization(mean, std))
    if Path(source, "dataset.json").exists():
        files = sorted(Path(load_dataset_info(source).features_dir).glob("*.parquet"))
        tables = (pq.read_table(f, columns=["fbank", "num_frames", "num_mel_bins"]) for f in files)
        chunks = (t.slice(k, batch) for t in tables for k in range(0, t.num_rows, batch))
    else:
        manifest = read_manifest(source)
        chunks = (
            featurize_table(manifest.slice(k, batch), FeatureConfig())[0]
            for k in range(0, manifest.num_rows, batch)
        )
    with torch.no_grad():  # warm-up
        model(torch.zeros(batch, model.cfg.input_tdim, model.cfg.input_fdim))
    start, clips = time.perf_counter(), 0
    with torch.no_grad():
        for chunk in chunks:
            if not chunk.num_rows:  # a batch of unreadable clips only
                continue
            x = prepare.prepare(chunk)["fbank"]
            model(torch.from_numpy(x)).argmax(1)
            clips += len(x)
    return clips / (time.perf_counter() - start)


def predict_job(model: str, source: str, out: Path) -> tuple[float, int]:
    """(clips/s, clips) of jobs/predict.py's job, 2 actors x 1 CPU, end to end."""
    summary = run_prediction(
        model, source, str(out), PredictConfig(num_actors=2, cpus_per_actor=1.0)
    )
    return summary.num_predictions / summary.seconds, summary.num_predictions


def doubled(source: str, tmp: Path) -> str:
    """The same input twice over (a manifest with every row twice, or a dataset directory
    with every shard twice): the job on it minus the job on ``source`` is the cost of
    the extra clips alone, without the fixed start-up (actors, model broadcast)."""
    if Path(source, "dataset.json").exists():
        out = tmp / "doubled_ds"
        (out / "features").mkdir(parents=True)
        shutil.copy(Path(source, "dataset.json"), out / "dataset.json")
        for f in Path(source, "features").glob("*.parquet"):
            for k in (0, 1):
                shutil.copy(f, out / "features" / f"{f.stem}-{k}.parquet")
        return str(out)
    rows = read_manifest(source)  # + uri (the resolved path) and row_index columns
    rows = rows.set_column(
        rows.schema.get_field_index("path"), "path", rows.column("uri")
    ).drop_columns(["uri", "row_index"])
    out = tmp / "doubled.parquet"
    pq.write_table(pa.concat_tables([rows, rows]), out)
    return str(out)


def predict_marginal(model: str, source: str, tmp: Path, name: str) -> dict[str, float]:
    """End-to-end and steady-state (marginal) clips/s of the Ray job on ``source``."""
    speed, n = predict_job(model, source, tmp / f"pred_{name}")
    speed2, n2 = predict_job(model, doubled(source, tmp), tmp / f"pred2_{name}")
    t, t2 = n / speed, n2 / speed2
    return {
        "end_to_end": speed,
        "steady_state": (n2 - n) / (t2 - t),
        "clips": n,
        "startup_s": t - n * (t2 - t) / (n2 - n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=700)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--out", default="bench/results/finetune.json")
    args = ap.parse_args()
    import ray

    cpus = os.cpu_count() or 1
    res: dict = {"config": vars(args) | {"cpus": cpus}}
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "4")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Logical CPUs: Train workers take 1 each, Ray Data needs some.
        ray.init(num_cpus=cpus + 2, include_dashboard=True, log_to_driver=False)
        try:
            manifest = write_corpus(
                tmp / "corpus", num_clips=args.clips, duration_s=(1.0, 4.0), seed=5
            )
            data = str(tmp / "ds")
            featurize(
                str(manifest), data, FeaturizeConfig(clips_per_shard=64, max_error_fraction=0.1)
            )
            uri = f"sqlite:///{tmp / 'mlflow.db'}"
            res["finetune_1_worker"], model = finetune(data, tmp, 1, args, uri)
            res["finetune_2_workers"], _ = finetune(data, tmp, 2, args, uri)
        finally:
            ray.shutdown()  # the loops below run on a quiet machine, as a user runs them
        for name, source in (("audio", str(manifest)), ("features", data)):
            res[f"predict_{name}_loop_1_thread"] = predict_loop(model, source, 1)
            res[f"predict_{name}_loop_all_threads"] = predict_loop(model, source, cpus)
        # A fresh local Ray with the machine's own CPUs, as jobs/predict.py starts it.
        ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=False)
        try:
            for name, source in (("audio", str(manifest)), ("features", data)):
                job = predict_marginal(model, source, tmp, name)
                res[f"predict_{name}_ray_2_actors"] = job["end_to_end"]
                res[f"predict_{name}_ray_2_actors_steady"] = job["steady_state"]
                res[f"predict_{name}_ray_startup_s"] = job["startup_s"]
                res["clips_predicted"] = job["clips"]
        finally:
            ray.shutdown()
    res["finetune_speedup_2_vs_1"] = res["finetune_2_workers"] / res["finetune_1_worker"]
    for name in ("audio", "features"):
        for loop in ("1_thread", "all_threads"):
            for kind in ("", "_steady"):
                res[f"predict_{name}_ray{kind}_vs_loop_{loop}"] = (
                    res[f"predict_{name}_ray_2_actors{kind}"] / res[f"predict_{name}_loop_{loop}"]
                )
    res["driver_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"tiny patch, {args.frames} frames, {res['clips_predicted']} clips, {cpus} cpus")
    print(f"fine-tune, Ray Train 1 worker x 1 CPU   {res['finetune_1_worker']:7.2f} samples/s")
    print(
        f"fine-tune, Ray Train 2 workers x 1 CPU  {res['finetune_2_workers']:7.2f} samples/s"
        f"  {res['finetune_speedup_2_vs_1']:.2f}x"
    )
    for name in ("audio", "features"):
        r = {
            k.removeprefix(f"predict_{name}_"): v
            for k, v in res.items()
            if k.startswith(f"predict_{name}_")
        }
        print(
            f"predict from {name}: loop 1 thread {r['loop_1_thread']:.2f}, loop {cpus} "
            f"threads {r['loop_all_threads']:.2f} clips/s"
        )
        print(
            f"  Ray Data 2 actors x 1 CPU, end to end {r['ray_2_actors']:.2f} clips/s = "
            f"{r['ray_vs_loop_1_thread']:.2f}x / {r['ray_vs_loop_all_threads']:.2f}x the "
            f"loops (fixed start-up {r['ray_startup_s']:.1f} s)"
        )
        print(
            f"  Ray Data 2 actors x 1 CPU, steady state {r['ray_2_actors_steady']:.2f} "
            f"clips/s = {r['ray_steady_vs_loop_1_thread']:.2f}x / "
            f"{r['ray_steady_vs_loop_all_threads']:.2f}x the loops"
        )
    print(f"driver peak RSS {res['driver_peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
