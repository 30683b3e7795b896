"""The whole pipeline on generated data: the bundled evaluation suite's unlabelled pool ->
pretraining (with the probe curve) -> the sample corpus fine-tuned from the encoder and
from scratch -> a small Tune sweep -> batch prediction -> the evaluation suite: baseline,
scratch and pretrained, side by side.

    make demo                      # = python -m jobs.demo --output demo_out
    python -m jobs.demo --output demo_out --suite-scale 1 --trials 8 \
        --pretrain train.max_steps=600 --bench num_seeds=3           # the full recipe

Writes under --output: corpus/ (sample audio + manifest), features/ (its dataset), suite/
(the evaluation suite's audio and suite.yaml), pool/ (the pool's features, 2 s segments),
pretrain/ (checkpoints, final encoder), finetune_pretrained/ and finetune_scratch/
(model.pt, metrics.json, reports), sweep/ (trials, best/model.pt), predictions/
(Parquet), benchmark/ (results.md, results.json, the tasks' features). The MLflow runs go
to the project's local store; the report ends with the comparison table and the UI
command.
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

from jobs.evaluation.config import BenchmarkConfig
from jobs.evaluation.driver import run_benchmark
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
from pipeline.features import FeatureConfig
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.suite import write_suite
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
PRETRAIN = ["train.max_steps=300", "train.checkpoint_every=100", "eval.every_steps=100"]
"""The demo's pretraining: the small recipe, shortened (the recipe's 600 steps take about
17 minutes here on the full pool)."""
BENCH = [
    "methods=[baseline,probe,finetune]",
    "num_seeds=2",
    "finetune_overrides=[train.max_epochs=10]",
]
"""The demo's benchmark: two seeds, fine-tuning shortened to 10 epochs."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="demo_out")
    ap.add_argument("--clips", type=int, default=140, help="generated clips (7 classes)")
    ap.add_argument("--trials", type=int, default=2, help="Tune sweep trials (0: no sweep)")
    ap.add_argument(
        "--suite-scale",
        type=float,
        default=0.25,
        help="size of the evaluation suite and its pool (1: 3 x 512 clips, 1,000 pool clips)",
    )
    ap.add_argument(
        "--pretrain",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining overrides (jobs/configs/pretrain_small.yaml)",
    )
    ap.add_argument(
        "--bench", nargs="*", default=[], metavar="KEY=VALUE", help="benchmark overrides"
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

    # The evaluation suite: its pool to pretrain on (2 s segments), its events task as
    # the probe's labelled set (featurized where the benchmark looks for it).
    manifests = write_suite(out / "suite", seed=0, scale=args.suite_scale)
    pool = str(out / "pool")
    featurize(str(manifests["pool"]), pool, FeaturizeConfig(features=FeatureConfig(segment_s=2.0)))
    events = str(out / "benchmark" / "features" / "events")
    featurize(str(manifests["events"]), events, FeaturizeConfig())
    cfg = load_config(
        PretrainConfig,
        CONFIGS / "pretrain_small.yaml",
        [*PRETRAIN, f"eval.data={events}", "eval.task=events", *args.pretrain],
    )
    pretrained = run_pretraining(pool, str(out / "pretrain"), cfg)
    print("\n== pretraining (the evaluation suite's pool) ==\n" + describe(pretrained))

    # The encoder reads clips with their own mean removed (data.clip_mean), so do these.
    ft = load_config(
        FinetuneConfig,
        CONFIGS / "finetune_sample.yaml",
        ["data.clip_mean=true", *args.finetune],
    )
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
                "data.clip_mean=true",
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
    bench_cfg = load_config(BenchmarkConfig, None, [*BENCH, *args.bench])
    encoder = f"pretrained={pretrained.final_dir}/ssast.pt"  # its column: "pretrained"
    bench = run_benchmark(
        [encoder, "scratch"], str(out / "suite" / "suite.yaml"), str(out / "benchmark"), bench_cfg
    )
    print(report(out, pretrained, runs, sweep, time.perf_counter() - start))
    print(comparison(bench, pretrained))
    return 0


def comparison(bench, pretrained) -> str:
    """The evaluation suite's table, and the probe curve."""
    import mlflow

    table = bench.table
    client = mlflow.MlflowClient(pretrained.mlflow_uri)
    curve = client.get_metric_history(pretrained.mlflow_run_id, "probe/events/accuracy")
    points = ", ".join(f"step {m.step}: {m.value:.3f}" for m in sorted(curve, key=lambda m: m.step))
    return "\n".join(
        [
            "",
            "== is the encoder any good? (the evaluation suite: test accuracy on held-out "
            "sources and rooms, mean ± std over seeds (runs); chance 0.125) ==",
            table,
            "baseline: logistic regression on pooled filterbank statistics; probe: the same "
            "on the frozen encoder's mean patch token; finetune: jobs/configs/"
            "finetune_small.yaml (shortened), the same for scratch and pretrained",
            f"probe curve during pretraining (events): {points or 'none'}",
            f"results      {bench.output}/results.md, results.json; MLflow experiment "
            "ssast-benchmark (and probe/events/accuracy in the pretraining run)",
        ]
    )


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
        "(7 classes: chance accuracy 0.143. The encoder was pretrained for minutes on the "
        "suite's pool, not on this corpus.)",
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
