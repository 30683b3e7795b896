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

--model is a fine-tuned model.pt (labels, scores, embeddings) or a pretrained encoder,
ours or a released SSAST .pth (embeddings). --input is a featurized dataset directory or
a manifest / audio directory (featurized on the fly). Writes OUTPUT/predictions/*.parquet
(path, clip_id, segment_index, start_s, end_s, then top_labels + top_scores, scores, or
embedding) and OUTPUT/errors/part-000000.parquet (path, reason, detail) for clips that
could not be decoded.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/predict.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import config_parser, init_ray, resolve_config, setup_logging
from jobs.prediction import PredictConfig, run_prediction


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument("--model", required=True, help="model.pt, our checkpoint or an SSAST .pth")
    ap.add_argument("--input", required=True, help="featurized dataset dir or manifest")
    ap.add_argument("--output", required=True, help="output directory (local, s3://)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = resolve_config(PredictConfig, args)
    init_ray(args.num_cpus)
    s = run_prediction(args.model, args.input, args.output, cfg)
    print(f"predictions  {s.output}/predictions ({s.num_predictions} rows, mode {cfg.mode})")
    print(f"errors       {s.output}/errors ({s.num_errors} clips could not be read)")
    print(f"time         {s.seconds:.1f} s ({s.num_predictions / s.seconds:.1f} clips/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
