"""Every manifest and YAML under infra/ and jobs/configs/ parses and validates; the checks
of infra/validate.py catch the mistakes they are for."""

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("infra_validate", ROOT / "infra" / "validate.py")
validate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate)
ManifestError = validate.ManifestError

INFRA_FILES = sorted(
    p
    for p in (ROOT / "infra").rglob("*")
    if p.is_file() and p.suffix in (".yaml", ".yml", "") and "__pycache__" not in p.parts
)


def test_every_infra_file_has_a_check():
    """A new manifest under infra/ must come with a check in infra/validate.py."""
    assert set(INFRA_FILES) == set(validate.checked_files())
    assert (ROOT / "infra" / "kuberay" / "rayjob-pretrain.yaml") in INFRA_FILES


@pytest.mark.parametrize("path", INFRA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_infra_file_validates(path):
    validate.checked_files()[path](path)
    validate.check_no_credentials(path)


def test_shipped_job_configs_are_all_loaded_by_test_configs():
    from tests.test_configs import CONFIGS, KINDS

    assert set(CONFIGS) == set((ROOT / "jobs" / "configs").glob("*.y*ml"))
    assert {p.name.split("_")[0].removesuffix(".yaml") for p in CONFIGS} <= set(KINDS)


def test_validate_script_exits_zero():
    done = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "validate.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout


# ------------------------------------------------------------- the checks can fail


def load(name: str) -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "infra" / "kuberay" / name).read_text()))


def pretrain_job() -> dict:
    [doc] = load("rayjob-pretrain.yaml")
    return doc


def gpu_group(doc: dict) -> dict:
    return next(
        g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    )


def broken_jobs():
    """(what is wrong, mutate(doc), expected message part) for the pretraining RayJob."""

    def set_in(path, value):
        def mutate(doc):
            node = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value

        return mutate

    def fewer_gpus(doc):
        group = gpu_group(doc)
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        limits["nvidia.com/gpu"] = "2"
        group["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "2"

    def no_toleration(doc):
        gpu_group(doc)["template"]["spec"].pop("tolerations")

    def cpu_image(doc):
        for _, _, pod in validate._pods(doc["spec"]["rayClusterSpec"]):
            for c in pod["containers"]:
                c["image"] = c["image"].replace("-cuda", "-cpu")

    def greedy_request(doc):
        res = gpu_group(doc)["template"]["spec"]["containers"][0]["resources"]
        res["requests"]["memory"] = "400Gi"

    def entry(text):
        return set_in(["spec", "entrypoint"], text)

    job = pretrain_job()["spec"]["entrypoint"]
    return [
        ("old ray", set_in(["spec", "rayClusterSpec", "rayVersion"], "2.59.0"), "rayVersion"),
        ("no auth", set_in(["spec", "rayClusterSpec", "authOptions"], {}), "token"),
        (
            "busy head",
            set_in(["spec", "rayClusterSpec", "headGroupSpec", "rayStartParams"], {}),
            "num-cpus",
        ),
        ("too few gpus", fewer_gpus, "do not fit"),
        ("gpu taint", no_toleration, "taint"),
        ("cpu image", cpu_image, "-cuda"),
        ("requests > limits", greedy_request, "exceeds limits"),
        (
            "missing script",
            entry(job.replace("jobs/pretrain.py", "jobs/pretrian.py")),
            "does not exist",
        ),
        (
            "missing config",
            entry(job.replace("pretrain_base_patch", "pretrain_huge")),
            "pretrain_huge",
        ),
        ("bad override", entry(job + " optim.lr=-1"), "optim.lr"),
        ("unknown key", entry(job + " train.max_stpes=3"), "max_stpes"),
        ("local output", entry(job.replace("s3://YOUR-BUCKET/ssast/pretrain", "/tmp/x")), "s3://"),
        (
            "no mlflow",
            set_in(
                ["spec", "runtimeEnvYAML"],
                "working_dir: /home/ray/ssast\nenv_vars: "
                "{RAY_DATA_PARQUET_FOOTER_NUM_ACTORS: '4', PYTHONUNBUFFERED: '1'}\n",
            ),
            "MLflow",
        ),
        (
            "wrong working dir",
            set_in(
                ["spec", "runtimeEnvYAML"],
                pretrain_job()["spec"]["runtimeEnvYAML"].replace("/home/ray/ssast", "/app"),
            ),
            "WORKDIR",
        ),
    ]


@pytest.mark.parametrize("case", broken_jobs(), ids=lambda c: c[0])
def test_rayjob_check_rejects(case):
    _, mutate, message = case
    doc = copy.deepcopy(pretrain_job())
    validate.check_rayjob("rayjob-pretrain.yaml", doc)  # the shipped one passes
    mutate(doc)
    with pytest.raises(ManifestError, match=message):
        validate.check_rayjob("rayjob-pretrain.yaml", doc)


def test_cluster_launcher_check_rejects(tmp_path):
    good = yaml.safe_load((ROOT / "infra" / "cluster-launcher" / "aws.yaml").read_text())
    cases = {
        "schema": lambda c: c.update(max_wokers=3),
        "do not fit": lambda c: c["available_node_types"]["gpu_worker"].update(max_workers=0),
        "CPU: 0": lambda c: c["available_node_types"]["head"].update(resources={}),
        "-cuda": lambda c: c["docker"].update(image="REGISTRY/ssast:x-cpu"),
    }
    for message, mutate in cases.items():
        config = copy.deepcopy(good)
        mutate(config)
        path = tmp_path / "aws.yaml"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(ManifestError, match=message):
            validate.check_cluster_launcher(path)


def test_dockerfile_and_runtime_env_checks_reject(tmp_path, monkeypatch):
    with pytest.raises(ManifestError, match="RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"):
        validate.check_runtime_env("runtime_env.yaml", {"env_vars": {}})
    with pytest.raises(ManifestError, match="invalid runtime_env"):
        validate.check_runtime_env("runtime_env.yaml", {"pip": 3})
    with pytest.raises(ManifestError, match="credential"):
        leaked = tmp_path / "leak.yaml"
        leaked.write_text("env_vars: {AWS_SECRET_ACCESS_KEY: abc}\n")
        validate.check_no_credentials(leaked)
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    for wrong, message in (
        (text.replace("2.60.0-py311", "2.59.0-py311"), "base image"),
        (text + "\nCOPY --chown=ray:users nowhere nowhere\n", "nowhere"),
        (text.replace(" . \\", " ssast-ray==0.1 \\"), "pip install"),
    ):
        path = tmp_path / "Dockerfile"
        path.write_text(wrong)
        with pytest.raises(ManifestError, match=message):
            validate.check_dockerfile(path)


def test_quantities():
    assert validate.quantity("500m") == 0.5
    assert validate.quantity("16Gi") == 16 * 2**30
    assert validate.quantity("8G") == 8e9
    assert validate.quantity(4) == 4
    with pytest.raises(ManifestError):
        validate.quantity("4 cores")
