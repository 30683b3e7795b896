"""Dataset statistics: per-shard sums combine into the statistics of all values."""

import numpy as np
import pytest

from pipeline.clips import featurize_table
from pipeline.featurize import FeaturizeConfig, _shard_stats, aggregate_stats
from pipeline.manifest import read_manifest
from pipeline.synth import write_corpus


def test_shard_sums_combine_into_the_statistics_of_every_value(tmp_path):
    cfg = FeaturizeConfig(clips_per_shard=4)
    rows = read_manifest(str(write_corpus(tmp_path, num_clips=8, duration_s=(0.3, 0.8), seed=2)))
    shards = [rows.slice(k, 5) for k in range(0, rows.num_rows, 5)]
    outputs = [featurize_table(s, cfg.features) for s in shards]
    stats = [
        _shard_stats(k, s, f, e, cfg)
        for k, (s, (f, e)) in enumerate(zip(shards, outputs, strict=True))
    ]
    info = aggregate_stats(stats, rows, cfg)

    values = np.concatenate(
        [np.asarray(v, np.float64) for f, _ in outputs for v in f.column("fbank").to_pylist()]
    )
    assert info["mean"] == pytest.approx(values.mean(), abs=1e-9)
    assert info["std"] == pytest.approx(values.std(), rel=1e-9)
    per_bin = values.reshape(-1, cfg.features.num_mel_bins)
    np.testing.assert_allclose(info["mean_per_bin"], per_bin.mean(0), atol=1e-9)
    np.testing.assert_allclose(info["std_per_bin"], per_bin.std(0), rtol=1e-7)
    errors = sum(e.num_rows for _, e in outputs)
    assert errors > 0 and info["num_errors"] == errors
    assert info["num_rows"] + errors == rows.num_rows == info["num_inputs"]
    assert info["num_frames"] == per_bin.shape[0] and info["num_shards"] == len(shards)
