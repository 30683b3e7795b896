"""Pretrain an SSAST encoder with masked spectrogram patch modelling on Ray Train.

Local (starts a local Ray when none is reachable):
    python jobs/pretrain.py --data data/features --output runs/pretrain \
        model.size=tiny train.max_steps=200
On a cluster:
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- \
        python jobs/pretrain.py --config jobs/configs/pretrain_base_patch.yaml \
        --data s3://bucket/features/v1 --output s3://bucket/ssast/pretrain \
        scaling.num_workers=16 scaling.use_gpu=true

--data is a featurized dataset directory (jobs/featurize.py) or a manifest / audio
directory (featurized on the fly). Rerunning with the same --output and name resumes
from the latest checkpoint. The final encoder lands in OUTPUT/final/ (ours and the
released SSAST layout) and in the MLflow model registry.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/pretrain.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.kit.cli import config_parser, resolve_config, run_job, setup_logging
from jobs.kit.cluster import init_ray
from jobs.kit.timing import Phases
from jobs.pretraining.config import PretrainConfig
from jobs.pretraining.driver import describe, run_pretraining


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(__doc__)
    ap.add_argument("--data", required=True, help="featurized dataset dir, or a manifest")
    ap.add_argument("--output", required=True, help="storage for checkpoints (local, s3://)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    phases = Phases()
    cfg = resolve_config(PretrainConfig, args)
    with phases("ray_start"):
        init_ray(args.num_cpus)
    return run_job(args, lambda: _run(args, cfg, phases))


def _run(args, cfg: PretrainConfig, phases: Phases) -> int:
    print(describe(run_pretraining(args.data, args.output, cfg, phases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
