"""YAML + dotted overrides into nested dataclasses."""

import pytest

from jobs.kit.config import flatten, load_config, to_dict
from pipeline.featurize import FeaturizeConfig


def test_yaml_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("clips_per_shard: 32\nfeatures:\n  num_mel_bins: 64\n")
    cfg = load_config(FeaturizeConfig, tmp_path / "c.yaml", ["features.segment_s=10", "limit=5"])
    assert cfg.clips_per_shard == 32 and cfg.limit == 5
    assert cfg.features.num_mel_bins == 64 and cfg.features.segment_s == 10.0
    assert flatten(to_dict(cfg))["features.num_mel_bins"] == 64


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clips_per_shrd=3", "did you mean clips_per_shard"),
        ("features.num_mel_bin=3", "did you mean features.num_mel_bins"),
        ("clips_per_shard=abc", "clips_per_shard must be int"),
        ("features.channel_mix=left", "must be one of"),
        ("clips_per_shard=0", "clips_per_shard must be >= 1"),
        ("features=3", "must be a section"),
    ],
)
def test_bad_keys_and_values_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(FeaturizeConfig, None, [override])
