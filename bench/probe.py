"""The linear probe's fit, side by side in one run: ours (scipy's L-BFGS on the loss and
its gradient written out) against torch.optim.LBFGS with autograd (the implementation
before 2026-12-07) and scikit-learn's LogisticRegression (lbfgs), same data, one thread.

    .venv/bin/python bench/probe.py                 # ~3 min: suite at scale 0.25, events
    .venv/bin/python bench/probe.py --data FEATURIZED_LABELLED_DIR

The features are what the benchmark's `probe_layers=all` fits: the clip embeddings after
every block of a tiny encoder with random weights (scratch, seed 0; or --encoder REF) on a
task's train split, each fitted at every L2 strength of the grid. Reported: the total
fit time of each implementation, the ratio to ours, the largest weight difference to
ours and how many test predictions differ from ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the jobs/ package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jobs.evaluation.probes import L2_GRID, LabelledSet, LinearProbe, fit_logistic  # noqa: E402
from jobs.evaluation.run import _encoder, embed  # noqa: E402
from pipeline.batches import ModelInput, auto_target_frames  # noqa: E402


def fit_torch(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> LinearProbe:
    """The previous fit: torch's L-BFGS (strong Wolfe) on an autograd loss."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = torch.from_numpy((x - mean) / scale).double()
    target = torch.from_numpy(np.asarray(y, np.int64))
    w = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, target) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mean, scale, w.detach().numpy(), b.detach().numpy(), l2)


def fit_sklearn(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> LinearProbe:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=500)
    ref.fit((x - mean) / scale, y)
    if ref.coef_.shape[0] != num_classes:
        raise ValueError("every class must be in the train split")
    return LinearProbe(mean, scale, ref.coef_, ref.intercept_, l2)


def features(data: str, encoder: str | None) -> tuple[list[np.ndarray], LabelledSet]:
    d = LabelledSet.read(data)
    T = auto_target_frames(d.rows.column("num_frames").to_numpy())
    payload = None
    if encoder:
        from jobs.kit.models import read_model

        payload = read_model(encoder).payload
    spec = {"input_tdim": T, "scratch_size": "tiny", "seed": 0, "member": encoder or "scratch"}
    model = _encoder(spec, payload, None, d.num_mel_bins)
    return embed(model, d.rows, ModelInput(T, d.statistics), 32, every_layer=True), d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a featurized labelled dataset (default: suite events)")
    ap.add_argument("--scale", type=float, default=0.25, help="suite scale without --data")
    ap.add_argument("--encoder", help="model reference (default: tiny, random weights)")
    ap.add_argument("--out", default="bench/results/probe.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from jobs.kit.cluster import init_ray
            from pipeline.featurize import FeaturizeConfig, featurize
            from pipeline.suite import write_suite

            init_ray(num_cpus=None)
            manifests = write_suite(Path(tmp) / "suite", seed=0, scale=args.scale)
            data = str(Path(tmp) / "events")
            featurize(str(manifests["events"]), data, FeaturizeConfig())
        layers, d = features(data, args.encoder)
    train, test = d.split == "train", d.split == "test"
    fits = {"ours": fit_logistic, "torch_lbfgs": fit_torch, "sklearn": fit_sklearn}
    fit_logistic(layers[0][train][:8], d.y[train][:8], d.num_classes, 1.0)  # warm-up
    seconds = dict.fromkeys(fits, 0.0)
    weight_diff = dict.fromkeys(fits, 0.0)
    flips = dict.fromkeys(fits, 0)
    for x in layers:
        for l2 in L2_GRID:
            probes = {}
            for name, fit in fits.items():
                start = time.perf_counter()
                probes[name] = fit(x[train], d.y[train], d.num_classes, l2)
                seconds[name] += time.perf_counter() - start
            ours = probes["ours"].scores(x[test]).argmax(axis=1)
            for name, p in probes.items():
                weight_diff[name] = max(
                    weight_diff[name], float(np.abs(p.weight - probes["ours"].weight).max())
                )
                flips[name] += int((p.scores(x[test]).argmax(axis=1) != ours).sum())
    res = {
        "fits": len(layers) * len(L2_GRID),
        "train_rows": int(train.sum()),
        "dim": int(layers[0].shape[1]),
        "classes": d.num_classes,
        "seconds": seconds,
        "ratio_to_ours": {k: v / seconds["ours"] for k, v in seconds.items()},
        "max_weight_diff_to_ours": weight_diff,
        "test_predictions_differing": flips,
        "test_predictions": int(test.sum()) * len(layers) * len(L2_GRID),
        "config": vars(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(
        f"{res['fits']} fits ({len(layers)} layers x {len(L2_GRID)} L2), {res['train_rows']} "
        f"train rows x {res['dim']} dims, {d.num_classes} classes, one thread"
    )
    print("fit            seconds  x ours  max |dW| vs ours  test predictions differing")
    for name in fits:
        print(
            f"{name:<14s}{seconds[name]:8.2f}  {res['ratio_to_ours'][name]:6.2f}  "
            f"{weight_diff[name]:16.1e}  {flips[name]} of {res['test_predictions']}"
        )


if __name__ == "__main__":
    main()
