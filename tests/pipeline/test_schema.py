"""dataset.json compatibility checks."""

import json

import pytest

from pipeline.features import FeatureConfig
from pipeline.schema import SCHEMA_VERSION, load_dataset_info


def write_info(root, **changes):
    info = {
        "schema_version": SCHEMA_VERSION,
        "feature_config": FeatureConfig().to_dict(),
        "num_rows": 3,
        "num_errors": 0,
        "hours": 0.1,
        "mean": -5.0,
        "std": 4.0,
    }
    info.update(changes)
    (root / "dataset.json").write_text(json.dumps(info))


def test_matching_dataset_loads(tmp_path):
    write_info(tmp_path)
    info = load_dataset_info(str(tmp_path), expected=FeatureConfig())
    assert (info.mean, info.std, info.num_rows) == (-5.0, 4.0, 3)


def test_other_schema_version_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no dataset.json"):
        load_dataset_info(str(tmp_path))
    write_info(tmp_path, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ValueError, match="schema version"):
        load_dataset_info(str(tmp_path))


def test_other_feature_config_is_refused_naming_the_field(tmp_path):
    write_info(tmp_path, feature_config=FeatureConfig(frame_shift_ms=20.0).to_dict())
    with pytest.raises(ValueError, match="frame_shift_ms: dataset 20.0 vs expected 10.0"):
        load_dataset_info(str(tmp_path), expected=FeatureConfig())


@pytest.mark.parametrize("stats", [{"mean": float("nan")}, {"std": float("inf")}, {"std": 0.0}])
def test_statistics_that_are_not_finite_are_refused(tmp_path, stats):
    write_info(tmp_path, **stats)  # json writes NaN / Infinity, and reads them back
    with pytest.raises(ValueError, match="statistics .* are not usable"):
        load_dataset_info(str(tmp_path))
