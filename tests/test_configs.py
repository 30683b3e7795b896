"""Every shipped YAML config loads and validates."""

from pathlib import Path

import pytest
import yaml

from jobs.pretrain_config import PretrainConfig
from pipeline.config import load_config
from pipeline.featurize import FeaturizeConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    kind = FeaturizeConfig if path.name.startswith("featurize") else PretrainConfig
    cfg = load_config(kind, path)
    if kind is PretrainConfig:
        model = cfg.model.ssast_config()
        assert model.num_masked <= model.num_patches


def test_runtime_env_parses():
    env = yaml.safe_load((ROOT / "infra" / "runtime_env.yaml").read_text())
    assert set(env) <= {"env_vars", "excludes", "pip", "working_dir", "py_modules"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
