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


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (PretrainConfig, "optim.lr=nan", "optim.lr must be a finite number, got nan"),
        (PretrainConfig, "optim.betas=[0.9]", "optim.betas must be a list of 2"),
        (PretrainConfig, "optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        (PretrainConfig, "scaling.cpus_per_worker=0", "scaling.cpus_per_worker must be > 0"),
        (PretrainConfig, "scaling.max_failures=-5", "scaling.max_failures must be >= 0"),
        (PretrainConfig, "data.limit=0", "data.limit must be >= 1"),
        (PretrainConfig, "model.num_masked=10000", "model.num_masked must be in \\[1, 512\\)"),
        (FinetuneConfig, "model.patch_stride=[0,10]", "model.patch_stride must be >= 1"),
        (FeaturizeConfig, "features.low_freq_hz=9000", "features: need 0 <= low_freq_hz"),
        (FeaturizeConfig, "features.frame_length_ms=0.01", "features: need 0 < frame_shift"),
        (FeaturizeConfig, "features.preemphasis=2", "features.preemphasis must be in"),
    ],
)
def test_invalid_values_are_refused_at_load_naming_the_key(cls, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(cls, None, [override])


def test_an_alias_bomb_is_not_expanded_in_the_message(tmp_path):
    """9 levels of 9 aliases: 9**9 strings if the message expanded them."""
    refs = ", ".join(["*{p}"] * 9)
    levels = ["&a [" + ", ".join(["x"] * 9) + "]"]
    levels += [f"&{c} [{refs.format(p=p)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    path = tmp_path / "bomb.yaml"
    path.write_text("limit:\n" + "".join(f"  - {v}\n" for v in levels))
    with pytest.raises(ValueError, match="limit must be int") as err:
        load_config(FeaturizeConfig, path)
    assert len(str(err.value)) < 500


def test_the_cli_prints_a_bad_config_as_one_line_and_exits_2(capsys):
    from jobs import featurize

    with pytest.raises(SystemExit) as stop:
        featurize.main(["--input", "x", "--output", "y", "features.preemphasis=2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "preemphasis" in err


def test_job_errors_a_user_can_fix_are_one_line_bugs_keep_their_traceback(capsys):
    import argparse

    from ray.exceptions import RayTaskError

    from jobs.kit.cli import run_job
    from jobs.kit.training import NonFiniteLossError

    def failing(err):
        def body():
            raise err

        return body

    quiet, debug = argparse.Namespace(debug=False), argparse.Namespace(debug=True)
    missing = FileNotFoundError(2, "No such file or directory", "/no/manifest.csv")
    remote = RayTaskError(
        "shard", "Traceback (most recent call last):\n  ...", ValueError("bad row\nin shard 3")
    ).as_instanceof_cause()
    for err, code, text in (
        (missing, 2, "/no/manifest.csv"),
        (remote, 2, "bad row in shard 3"),
        (NonFiniteLossError("loss nan at step 4"), 3, "loss nan at step 4"),
    ):
        assert run_job(quiet, failing(err)) == code
        printed = capsys.readouterr().err
        assert printed.count("\n") == 1 and printed == f"error: {printed[7:]}", printed
        assert text in printed and "Traceback" not in printed
        with pytest.raises(type(err)):
            run_job(debug, failing(err))
    with pytest.raises(KeyError):  # a bug, not an input error
        run_job(quiet, failing(KeyError("x")))
    assert run_job(quiet, lambda: 0) == 0
