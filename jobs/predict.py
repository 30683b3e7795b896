"""Batch inference with Ray Data: top-k labels, scores or clip embeddings to Parquet.

Local (starts a local Ray when none is reachable):
    python jobs/predict.py --model runs/finetune/model.pt --input clips.csv --output preds
    python jobs/predict.py --model SSAST-Base-Patch-400.pth --input data/features \
        --output embeddings mode=embeddings normalization=audioset
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/predict.py --model s3://bucket/ssast/esc50/model.pt \
        --input s3://bucket/manifests/new.parquet --output s3://bucket/predictions/new \
        num_actors=8 use_gpu=true

--model is a fine-tuned model (labels, scores, embeddings) or a pretrained encoder, ours
or a released SSAST .pth (embeddings): a file (local or s3://), a training output
directory, or an MLflow URI (runs:/<id>/outputs/model.pt, models:/<name>/<version>).
--input is a featurized dataset directory (made with the model's feature settings) or a
manifest / audio directory, featurized on the fly with the model's own settings. Writes
OUTPUT/predictions/*.parquet (path, clip_id, segment_index, start_s, end_s, then
top_labels + top_scores, scores, or embedding) and OUTPUT/errors/part-000000.parquet
(path, reason, detail) for clips that could not be decoded.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/predict.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.inference.config import PredictConfig
from jobs.inference.driver import run_prediction
from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument(
        "--model", required=True, help="model.pt, checkpoint, directory, runs:/... or models:/..."
    )
    ap.add_argument("--input", required=True, help="featurized dataset dir or manifest")
    ap.add_argument("--output", required=True, help="output directory (local, s3://)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = resolve_config(PredictConfig, args)
    init_ray(args.num_cpus)
    return run_job(args, lambda: _predict(args, cfg))


def _predict(args, cfg: PredictConfig) -> int:
    s = run_prediction(args.model, args.input, args.output, cfg)
    print(f"predictions  {s.output}/predictions ({s.num_predictions} rows, mode {cfg.mode})")
    print(f"errors       {s.output}/errors ({s.num_errors} clips could not be read)")
    print(f"time         {s.seconds:.1f} s ({s.num_predictions / s.seconds:.1f} clips/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
