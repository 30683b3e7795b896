"""The whole pipeline on generated sample data: corpus -> features -> pretraining ->
fine-tuning (pretrained and from scratch) -> a small Tune sweep -> batch prediction.

    make demo                      # = python -m jobs.demo --output demo_out
    python -m jobs.demo --output demo_out --clips 700 --trials 8 \
        --pretrain train.max_steps=400 --finetune train.max_epochs=30      # bigger

Writes under --output: corpus/ (audio + manifest), features/ (dataset), pretrain/
(checkpoints, final encoder), finetune_pretrained/ and finetune_scratch/ (model.pt,
metrics.json, reports), sweep/ (trials, best/model.pt), predictions/ (Parquet). The MLflow
runs go to the project's local store (./mlflow.db); the report ends with the UI command.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.finetuning.config import FinetuneConfig
from jobs.finetuning.driver import FinetuneResult, run_finetuning
from jobs.finetuning.driver import describe as describe_finetuning
from jobs.inference.config import PredictConfig
from jobs.inference.driver import run_prediction
from jobs.kit.cli import ROOT, setup_logging
from jobs.kit.cluster import init_ray
from jobs.kit.config import load_config
from jobs.kit.tracking import ui_command
from jobs.pretraining.config import PretrainConfig
from jobs.pretraining.driver import describe, run_pretraining
from jobs.tuning.config import TuneJobConfig
from jobs.tuning.driver import describe as describe_tuning
from jobs.tuning.driver import run_tuning
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.synth import write_corpus

CONFIGS = ROOT / "jobs" / "configs"
SWEEP = [
    "train.max_epochs=6",
    "scaling.cpus_per_worker=0.5",
    "tune.max_concurrent_trials=2",
    "tune.grace_period=1",
    "name=sweep",
]
"""The demo sweep: short trials, two at a time on a 2-core machine."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="demo_out")
    ap.add_argument("--clips", type=int, default=140, help="generated clips (7 classes)")
    ap.add_argument("--trials", type=int, default=4, help="Tune sweep trials (0: no sweep)")
    ap.add_argument(
        "--pretrain",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining overrides (jobs/configs/pretrain_demo.yaml)",
    )
    ap.add_argument(
        "--finetune",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tuning overrides (jobs/configs/finetune_sample.yaml)",
    )
    args = ap.parse_args(argv)
    setup_logging()
    start = time.perf_counter()
    out = Path(args.output).resolve()
    manifest = write_corpus(out / "corpus", num_clips=args.clips)
    init_ray(num_cpus=4)  # 2 cores here: logical oversubscription keeps Data and Train fed
    summary = featurize(
        str(manifest),
        str(out / "features"),
        FeaturizeConfig(clips_per_shard=32, max_error_fraction=0.1),
    )
    print("\n== featurization ==\n" + summary.table())
    data = str(out / "features")

    cfg = load_config(PretrainConfig, CONFIGS / "pretrain_demo.yaml", args.pretrain)
    pretrained = run_pretraining(data, str(out / "pretrain"), cfg)
    print("\n== pretraining ==\n" + describe(pretrained))

    ft = load_config(FinetuneConfig, CONFIGS / "finetune_sample.yaml", args.finetune)
    runs = {}
    for init, name in ((f"{pretrained.final_dir}/ssast.pt", "pretrained"), ("scratch", "scratch")):
        runs[name] = run_finetuning(
            data, str(out / f"finetune_{name}"), replace(ft, init=init, name=f"sample_{name}")
        )
        print(f"\n== fine-tuning from {name} ==\n" + describe_finetuning(runs[name]))

    sweep = None
    if args.trials:
        tune_cfg = load_config(
            TuneJobConfig,
            CONFIGS / "finetune_sample.yaml",
            [
                *args.finetune,
                *SWEEP,
                f"tune.num_samples={args.trials}",
                f"init={pretrained.final_dir}/ssast.pt",
            ],
        )
        sweep = run_tuning(data, str(out / "sweep"), tune_cfg)
        print(
            "\n== Tune sweep (fine-tuning from the pretrained encoder) ==\n"
            + describe_tuning(sweep)
        )

    model = f"{runs['pretrained'].output}/model.pt"
    predicted = run_prediction(
        model, str(manifest), str(out / "predictions"), PredictConfig(top_k=3)
    )
    print(
        f"\n== prediction ==\n{predicted.num_predictions} clips -> "
        f"{predicted.output}/predictions, {predicted.num_errors} unreadable -> "
        f"{predicted.output}/errors ({predicted.num_predictions / predicted.seconds:.1f} "
        "clips/s)"
    )
    print(report(out, pretrained, runs, sweep, time.perf_counter() - start))
    return 0


def report(out: Path, pretrained, runs: dict[str, FinetuneResult], sweep, seconds: float) -> str:
    """The closing summary: where everything is, and scratch vs pretrained."""
    keys = ("valid/accuracy", "test/accuracy", "test/mAP", "test/AUC")
    lines = ["", "== demo report ==", f"{'init':<12}" + "".join(f"{k:>16}" for k in keys)]
    for name, result in runs.items():
        m = result.metrics
        lines.append(f"{name:<12}" + "".join(f"{m.get(k, math.nan):>16.3f}" for k in keys))
    if sweep is not None:
        lines.append(
            f"{'best trial':<12}{sweep.best_metrics['best/valid/accuracy']:>16.3f}"
            f"{'':>48}  (valid only; {sweep.model_path})"
        )
    lines += [
        "(7 classes: chance accuracy 0.143. The demo pretrains for seconds, so expect the two "
        "rows to be close; pretraining pays off at scale.)",
        "",
        f"data         {out / 'corpus'} (audio), {out / 'features'} (fbank shards)",
        f"pretraining  {pretrained.final_dir}/ssast.pt, ssast_original.pth",
        f"fine-tuned   {runs['pretrained'].output}/model.pt, {runs['scratch'].output}/model.pt",
        *(
            [f"sweep        {sweep.model_path} (best trial), {out / 'sweep'} (all trials)"]
            if sweep is not None
            else []
        ),
        f"predictions  {out / 'predictions'}",
        f"mlflow       {pretrained.mlflow_uri}",
        "             experiments ssast-pretrain (pretraining), ssast-finetune (fine-tuning "
        "runs; the sweep is the parent run 'sweep' with a child run per trial)",
        f"open the UI  {ui_command(pretrained.mlflow_uri)}",
        f"took         {seconds / 60:.1f} min",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
