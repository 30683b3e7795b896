"""Every shipped YAML config loads and validates."""

from pathlib import Path

import pytest
import yaml

from jobs.finetuning.config import FinetuneConfig
from jobs.kit.config import load_config, with_length
from jobs.pretraining.config import PretrainConfig
from jobs.tuning.config import TuneJobConfig
from pipeline.featurize import FeaturizeConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
KINDS = {
    "featurize": (FeaturizeConfig,),
    "pretrain": (PretrainConfig,),
    "finetune": (FinetuneConfig, TuneJobConfig),
    "tune": (TuneJobConfig,),
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    kinds = KINDS[path.name.split("_")[0].removesuffix(".yaml")]
    for kind in kinds:
        cfg = load_config(kind, path)
        if (
            getattr(getattr(cfg, "model", None), "input_tdim", None) == "auto"
        ):  # the job resolves it
            cfg = with_length(cfg, 272)
        if kind is PretrainConfig:
            model = cfg.model.ssast_config()
            assert model.num_masked <= model.num_patches
        if isinstance(cfg, FinetuneConfig):
            model = cfg.model.ssast_config()
            assert model.input_tdim >= model.patch_shape[1]


def test_runtime_env_parses():
    env = yaml.safe_load((ROOT / "infra" / "runtime_env.yaml").read_text())
    assert set(env) <= {"env_vars", "excludes", "pip", "working_dir", "py_modules"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_configuration_reference_is_current():
    from jobs import config_reference

    text = config_reference.render()
    assert config_reference.DOC.read_text() == text, (
        "docs/configuration.md is out of date: run .venv/bin/python -m jobs.config_reference "
        "--write"
    )
    # Every key of every job is documented, with its meaning.
    for _, cls in config_reference.JOBS:
        for key, _, _, meaning in config_reference.rows(cls()):
            assert meaning, f"{cls.__name__}.{key} has no docstring"
            assert f"| `{key}` |" in text
