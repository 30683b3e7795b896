"""Search the fine-tuning recipe with Ray Tune (ASHA) on Ray Train trials.

Local (starts a local Ray when none is reachable):
    python jobs/tune.py --config jobs/configs/finetune_sample.yaml --data data/features \
        --output runs/sweep --init runs/pretrain/final/ssast.pt --num-samples 8
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/tune.py --config jobs/configs/finetune_esc50_patch.yaml \
        --data s3://bucket/features/esc50 --output s3://bucket/ssast/sweeps \
        --init s3://bucket/ssast/pretrain/final/ssast.pt --num-samples 32 \
        scaling.use_gpu=true tune.max_concurrent_trials=8

Any fine-tuning config or recipe is the base; tune.search_space (dotted keys ->
{loguniform|uniform|choice|randint: args}) says what varies. Each trial is a fine-tuning
run (a child MLflow run under the sweep's parent run); ASHA stops weak trials after
tune.grace_period epochs. The best trial's classifier goes to OUTPUT/best/model.pt and
the model registry (tune.registered_model). Running the same command again after the
driver died restores the sweep (same --output and name).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/tune.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray
from jobs.tuning.config import TuneJobConfig
from jobs.tuning.driver import describe, run_tuning


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument("--data", required=True, help="featurized dataset directory")
    ap.add_argument("--output", required=True, help="sweep storage (local, s3://)")
    ap.add_argument("--init", help="scratch | CHECKPOINT | DIR | runs:/... | models:/...")
    ap.add_argument("--num-samples", type=int, help="trials (tune.num_samples)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    if args.init:
        args.overrides = [*args.overrides, f"init={args.init}"]
    if args.num_samples is not None:  # --num-samples 0 is refused by the config
        args.overrides = [*args.overrides, f"tune.num_samples={args.num_samples}"]
    setup_logging()
    cfg = resolve_config(TuneJobConfig, args)
    init_ray(args.num_cpus)
    return run_job(args, lambda: _run(args, cfg))


def _run(args, cfg: TuneJobConfig) -> int:
    print(describe(run_tuning(args.data, args.output, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
