"""The whole pipeline on generated sample data: corpus -> features -> pretraining.

    make demo                      # = python -m jobs.demo --output demo_out
    python -m jobs.demo --output demo_out --clips 700 train.max_steps=200   # bigger

Writes demo_out/corpus (audio + manifest), demo_out/features (dataset), and
demo_out/pretrain (checkpoints, final encoder); the MLflow runs go to ./mlruns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import ROOT, init_ray, setup_logging
from jobs.pretrain_config import PretrainConfig
from jobs.pretraining import describe, run_pretraining
from pipeline.config import load_config
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.synth import write_corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="demo_out")
    ap.add_argument("--clips", type=int, default=140, help="generated clips (7 classes)")
    ap.add_argument("overrides", nargs="*", help="pretraining overrides, e.g. train.max_steps=80")
    args = ap.parse_args(argv)
    setup_logging()
    out = Path(args.output).resolve()
    manifest = write_corpus(out / "corpus", num_clips=args.clips)
    init_ray(num_cpus=4)  # 2 cores here: logical oversubscription keeps Data and Train fed
    summary = featurize(str(manifest), str(out / "features"),
                        FeaturizeConfig(clips_per_shard=32, max_error_fraction=0.1))
    print("\n== featurization ==\n" + summary.table())
    cfg = load_config(PretrainConfig, ROOT / "jobs" / "configs" / "pretrain_demo.yaml",
                      args.overrides)
    result = run_pretraining(str(out / "features"), str(out / "pretrain"), cfg)
    print("\n== pretraining ==\n" + describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
