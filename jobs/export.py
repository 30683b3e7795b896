"""Export a model to the formats users deploy: a Hugging Face folder or ONNX.

    python jobs/export.py --model runs/ft/model.pt --format hf --output exports/hf
    python jobs/export.py --model runs/ft/model.pt --format onnx --output exports/onnx

--model is any model reference predict accepts (file, directory, s3://, runs:/,
models:/, a released SSAST .pth). hf: a transformers `save_pretrained` folder that
`ASTModel` / `ASTForAudioClassification.from_pretrained` and `ASTFeatureExtractor` load
with no custom code. onnx: model.onnx (fbank (batch, frames, mel bins) in; logits, or the
encoder's patch tokens, out). Both write ssast_export.json: the input shape, feature
settings, normalization and labels. Needs the export extra (pip install -e '.[export]').
No Ray: it runs where it is started (under `ray job submit` the output lands on the head
node; export locally from an s3:// or models:/ reference instead).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/export.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.kit.cli import run_job, setup_logging


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="any model reference predict accepts")
    ap.add_argument("--format", required=True, choices=["hf", "onnx"])
    ap.add_argument("--output", required=True, help="a local directory")
    ap.add_argument("--debug", action="store_true", help="raise errors with the traceback")
    args = ap.parse_args(argv)
    setup_logging()
    return run_job(args, lambda: _export(args))


def _export(args) -> int:
    from jobs.kit.export import export_model

    result = export_model(args.model, args.format, args.output)
    print(f"exported {args.model} as {args.format} to {result.output}: {', '.join(result.files)}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
