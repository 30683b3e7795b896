"""Evaluate a fine-tuned model on a split of a featurized dataset.

Local:
    python jobs/evaluate.py --model runs/finetune/model.pt --data data/features --split test
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/evaluate.py --model s3://bucket/ssast/esc50/model.pt \
        --data s3://bucket/features/esc50 --split test num_actors=4

--model is any model reference predict accepts (file, directory, s3://, runs:/, models:/).
Prints accuracy, mAP, macro AUC and the per-class report; --output also writes them
as metrics.json and report.txt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.inference.config import PredictConfig
from jobs.inference.driver import evaluate_checkpoint
from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument(
        "--model", required=True, help="a fine-tuned model: file, dir, runs:/, models:/"
    )
    ap.add_argument("--data", required=True, help="featurized dataset directory")
    ap.add_argument("--split", default="test", help="value of the split column ('' = all)")
    ap.add_argument("--output", help="directory for metrics.json and report.txt")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = resolve_config(PredictConfig, args)
    init_ray(args.num_cpus)
    return run_job(args, lambda: _evaluate(args, cfg))


def _evaluate(args, cfg: PredictConfig) -> int:
    metrics, report = evaluate_checkpoint(args.model, args.data, args.split or None, cfg)
    print(report)
    print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "report.txt").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
