"""The suite's baseline features and linear probe against references (numpy, sklearn)."""

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from jobs.evaluation.probes import accuracy, fit_logistic, pooled_fbank, select_and_fit


def test_pooled_fbank_is_mean_std_max_over_each_clips_own_frames():
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(m, 4)).astype(np.float16) for m in (3, 1, 5)]
    rows = pa.table(
        {
            "fbank": [c.reshape(-1).tolist() for c in clips],
            "num_frames": [len(c) for c in clips],
            "num_mel_bins": [4] * 3,
        }
    )
    got = pooled_fbank(rows)
    for i, c in enumerate(clips):
        c = c.astype(np.float64)
        want = np.concatenate([c.mean(0), c.std(0), c.max(0)])
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_logistic_probe_matches_scikit_learn_on_fixed_embeddings():
    rng = np.random.default_rng(1)
    N, D, K = 120, 6, 3
    y = rng.integers(0, K, N)
    x = rng.normal(size=(N, D)) + 1.5 * np.eye(K, D)[y] + 5.0  # offset: standardisation
    l2 = 1e-2
    ours = fit_logistic(x, y, K, l2)
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1 / (l2 * N), tol=1e-10, max_iter=10_000).fit(z, y)
    np.testing.assert_allclose(ours.weight, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(
        ours.scores(x) - ours.scores(x).mean(1, keepdims=True),
        ref.decision_function(z) - ref.decision_function(z).mean(1, keepdims=True),
        atol=1e-4,
    )
    assert accuracy(ours.scores(x), y) == pytest.approx(ref.score(z, y))


def test_the_valid_split_picks_the_l2_strength():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 40)) + 0.8 * y[:, None] * (np.arange(40) < 2)  # 2 useful dims
    train, valid = (x[:40], y[:40]), (x[40:], y[40:])
    probe = select_and_fit(train, valid, 2, grid=(1e-4, 10.0))
    scores = {
        l2: accuracy(fit_logistic(*train, 2, l2).scores(valid[0]), valid[1]) for l2 in (1e-4, 10.0)
    }
    assert probe.l2 == max(scores, key=lambda k: (scores[k], k))
