"""Fine-tune an SSAST classifier on a labelled featurized dataset, on Ray Train.

Local (starts a local Ray when none is reachable):
    python jobs/finetune.py --data data/features --output runs/finetune \
        --init runs/pretrain/final/ssast.pt train.max_epochs=20
    python jobs/finetune.py --config jobs/configs/finetune_esc50_patch.yaml \
        --data data/esc50 --output runs/esc50 --init SSAST-Base-Patch-400.pth
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/finetune.py --config jobs/configs/finetune_audioset20k.yaml \
        --data s3://bucket/features/as20k --output s3://bucket/ssast/as20k \
        --init s3://bucket/ssast/pretrain/final/ssast.pt scaling.num_workers=4 \
        scaling.use_gpu=true

--init is 'scratch' (the from-scratch baseline), our checkpoint, a released SSAST .pth,
a pretraining output directory, or an MLflow URI (runs:/..., models:/name/version).
The dataset's `split` column selects train / valid / test rows and `label` holds the
class (data.label_column=..., data.multilabel=true for "a,b" multi-label cells).
A NaN/inf loss stops the run (exit code 3) with the step and learning rate in the error
and the last good checkpoint kept. Writes OUTPUT/model.pt (with the feature settings and
normalisation it was trained on), OUTPUT/metrics.json (test/accuracy, test/mAP, ...), per-class
reports and a confusion matrix; everything is logged to MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/finetune.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.finetuning.config import FinetuneConfig
from jobs.finetuning.driver import describe, run_finetuning
from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument("--data", required=True, help="featurized dataset directory")
    ap.add_argument("--output", required=True, help="output directory (local, s3://)")
    ap.add_argument(
        "--init",
        help="scratch | CHECKPOINT | DIR | runs:/... | models:/... "
        "(default: the config's init, scratch)",
    )
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    if args.init:
        args.overrides = [*args.overrides, f"init={args.init}"]
    setup_logging()
    cfg = resolve_config(FinetuneConfig, args)
    init_ray(args.num_cpus)
    return run_job(args, lambda: _run(args, cfg))


def _run(args, cfg: FinetuneConfig) -> int:
    print(describe(run_finetuning(args.data, args.output, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
