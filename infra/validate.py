"""Check the infra manifests against the project before applying them.

    .venv/bin/python infra/validate.py          # every file under infra/; exit 1 on problems

What it checks (tests/test_infra.py runs the same functions):
* KubeRay RayCluster / RayJob: Ray version = the installed one, token auth, a head that
  does no work (num-cpus 0), one image per manifest (CUDA variant where GPUs are asked
  for), requests <= limits, GPU tolerations, replica bounds; a RayJob's entrypoint runs an
  existing job script whose CLI accepts its arguments and config (the job's own parser and
  config loader, via --print-config), its Ray Train workers fit in the worker groups, and
  its runtimeEnvYAML is a valid runtime_env with the project's environment.
* The cluster-launcher YAML: Ray's own schema (prepare_config + validate_config), the
  same image rules, and that the GPU recipe fits its GPU node type.
* runtime_env.yaml, the Dockerfile (base image = pinned Ray / Python, COPY sources exist,
  WORKDIR = the RayJobs' working_dir) and that no file holds credentials.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
SECRET = re.compile(
    r"(aws_secret_access_key|aws_access_key_id|secret_key|password)\s*[:=]", re.IGNORECASE
)


class ManifestError(ValueError):
    """A manifest that would not work with this project; the message says where and why."""


def _fail(where: str, problem: str) -> None:
    raise ManifestError(f"{where}: {problem}")


def ray_version() -> str:
    import ray

    return ray.__version__


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "16", "180Gi", "8G") as a number."""
    units = {
        "m": 1e-3,
        "k": 1e3,
        "K": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not match or match.group(2) not in ("", *units):
        raise ManifestError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * units.get(match.group(2), 1.0)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def dockerfile_workdir() -> str:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    return re.findall(r"^WORKDIR\s+(\S+)", text, re.MULTILINE)[-1]


# ---------------------------------------------------------------- KubeRay


def _pods(cluster: dict) -> list[tuple[str, dict, dict]]:
    """(group name, group spec, pod spec) for the head and each worker group."""
    groups = [("head", cluster["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    return [(name, group, group["template"]["spec"]) for name, group in groups]


def _container_resources(where: str, pod: dict) -> dict[str, float]:
    """The limits of the pod's Ray container, after checking requests <= limits."""
    [container] = [c for c in pod["containers"] if c["name"].startswith("ray-")]
    res = container.get("resources", {})
    limits, requests = res.get("limits", {}), res.get("requests", {})
    for key in ("cpu", "memory"):
        if key not in limits:
            _fail(where, f"container {container['name']} sets no resources.limits.{key}")
    for key, value in requests.items():
        if key in limits and quantity(value) > quantity(limits[key]):
            _fail(where, f"requests.{key}={value} exceeds limits.{key}={limits[key]}")
    return {k: quantity(v) for k, v in limits.items()}


def check_ray_cluster_spec(where: str, cluster: dict) -> dict[str, dict]:
    """Check a RayCluster spec; returns per worker group {replicas max, cpu, gpu}."""
    if str(cluster.get("rayVersion")) != ray_version():
        _fail(
            where,
            f"rayVersion {cluster.get('rayVersion')!r} but the project pins Ray "
            f"{ray_version()} (client and cluster must match)",
        )
    auth = cluster.get("authOptions", {})
    if auth.get("mode") != "token" or not auth.get("secretName"):
        _fail(where, "authOptions must be {mode: token, secretName: ...} (token auth)")
    if str(cluster["headGroupSpec"].get("rayStartParams", {}).get("num-cpus")) != "0":
        _fail(where, 'the head must not run tasks: rayStartParams num-cpus: "0"')
    images, capacity, gpus_wanted = set(), {}, False
    for name, group, pod in _pods(cluster):
        images |= {c["image"] for c in pod["containers"]}
        limits = _container_resources(f"{where} group {name}", pod)
        gpus = limits.get("nvidia.com/gpu", 0.0)
        if gpus:
            gpus_wanted = True
            tolerated = {t.get("key") for t in pod.get("tolerations", [])}
            if "nvidia.com/gpu" not in tolerated:
                _fail(
                    where,
                    f"group {name} asks for GPUs but does not tolerate the nvidia.com/gpu taint",
                )
        if name != "head":
            lo, n, hi = (
                group.get("minReplicas", 0),
                group.get("replicas", 0),
                group.get("maxReplicas", 0),
            )
            if not lo <= n <= hi or hi < 1:
                _fail(
                    where,
                    f"group {name}: need minReplicas <= replicas <= maxReplicas, "
                    f"maxReplicas >= 1 (got {lo}, {n}, {hi})",
                )
            capacity[name] = {"pods": hi, "cpu": limits["cpu"], "gpu": gpus}
        mounts = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        missing = mounts - {v["name"] for v in pod.get("volumes", [])}
        if missing:
            _fail(where, f"group {name} mounts undeclared volumes {sorted(missing)}")
        if pod.get("serviceAccountName") != "ssast":
            _fail(
                where,
                f"group {name}: serviceAccountName must be ssast "
                "(infra/kuberay/serviceaccount.yaml; S3 access by workload identity)",
            )
    _check_images(where, images, gpus_wanted)
    return capacity


def _check_images(where: str, images: set[str], gpus: bool) -> None:
    if len(images) != 1:
        _fail(where, f"one image for head and workers, found {sorted(images)}")
    [image] = images
    variant = "cuda" if gpus else "cpu"
    if not image.endswith(f"-{variant}"):
        _fail(
            where,
            f"image {image} should be the -{variant} build "
            f"({'GPUs requested' if gpus else 'no GPUs'})",
        )


def job_config(where: str, argv: list[str]) -> Any:
    """Run the job's own CLI with --print-config: parses its arguments, loads and validates
    its config and overrides, and returns the resolved config."""
    if argv[:1] != ["python"] or len(argv) < 2:
        _fail(where, f"entrypoint should be `python jobs/<job>.py ...`, got {argv[:2]}")
    script = ROOT / argv[1]
    if not script.is_file() or script.parent != ROOT / "jobs":
        _fail(where, f"entrypoint script {argv[1]} does not exist under jobs/")
    spec = importlib.util.spec_from_file_location(f"_entry_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.main([*argv[2:], "--print-config"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                _fail(where, f"{argv[1]} rejects its arguments: {err.getvalue().strip()}")
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            _fail(where, f"{argv[1]}: {exc}")
    return yaml.safe_load(out.getvalue())


def _workers_fit(where: str, scaling: dict, capacity: dict[str, dict]) -> None:
    cpus, gpu = float(scaling["cpus_per_worker"]), bool(scaling["use_gpu"])
    fit = 0
    for group in capacity.values():
        per_pod = int(group["cpu"] // cpus) if cpus else 10**6
        if gpu:
            per_pod = min(per_pod, int(group["gpu"]))
        fit += per_pod * group["pods"]
    if fit < scaling["num_workers"]:
        _fail(
            where,
            f"{scaling['num_workers']} Ray Train workers x ({cpus:g} CPU"
            f"{', 1 GPU' if gpu else ''}) do not fit: the worker groups hold {fit}",
        )


def check_runtime_env(where: str, env: dict) -> None:
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**env)
    except (ValueError, TypeError) as exc:
        _fail(where, f"invalid runtime_env: {exc}")
    env_vars = env.get("env_vars", {})
    wanted = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())["env_vars"]
    for key, value in wanted.items():
        if env_vars.get(key) != value:
            _fail(where, f"runtime_env env_vars must set {key}={value} (as infra/runtime_env.yaml)")


def check_rayjob(where: str, doc: dict) -> None:
    spec = doc["spec"]
    capacity = check_ray_cluster_spec(where, spec["rayClusterSpec"])
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # working_dir is a path inside the image, checked against the Dockerfile below.
    check_runtime_env(where, {k: v for k, v in runtime_env.items() if k != "working_dir"})
    if runtime_env.get("working_dir") != dockerfile_workdir():
        _fail(
            where,
            f"runtimeEnvYAML working_dir should be the image's project directory "
            f"{dockerfile_workdir()} (infra/docker/Dockerfile WORKDIR)",
        )
    argv = shlex.split(spec["entrypoint"])
    cfg = job_config(where, argv)
    for flag in ("--data", "--input", "--output"):
        if flag in argv and not argv[argv.index(flag) + 1].startswith("s3://"):
            _fail(where, f"{flag} should be an s3:// URI on a cluster")
    if "scaling" in cfg:
        _workers_fit(where, cfg["scaling"], capacity)
    if "mlflow" in cfg:
        uri = cfg["mlflow"].get("tracking_uri") or runtime_env.get("env_vars", {}).get(
            "MLFLOW_TRACKING_URI", ""
        )
        if not uri.startswith(("http://", "https://")):
            _fail(
                where,
                "a cluster job needs an MLflow tracking server URI "
                "(MLFLOW_TRACKING_URI in runtimeEnvYAML or mlflow.tracking_uri=)",
            )


def check_kuberay(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kind = doc.get("kind")
        where = f"{_name(path)} ({kind})"
        if kind in ("RayCluster", "RayJob") and doc.get("apiVersion") != "ray.io/v1":
            _fail(where, f"apiVersion {doc.get('apiVersion')!r}, expected ray.io/v1")
        if kind == "RayCluster":
            check_ray_cluster_spec(where, doc["spec"])
        elif kind == "RayJob":
            check_rayjob(where, doc)
        elif kind != "ServiceAccount":
            _fail(where, "unexpected kind (RayCluster, RayJob or ServiceAccount)")


# ---------------------------------------------------------------- the rest


def check_cluster_launcher(
    path: Path, recipe: str = "jobs/configs/pretrain_base_patch.yaml"
) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    where = _name(path)
    config = yaml.safe_load(path.read_text())
    try:
        validate_config(prepare_config(config))
    except Exception as exc:  # jsonschema.ValidationError and Ray's own ValueErrors
        _fail(where, f"Ray's cluster config schema: {str(exc).splitlines()[0]}")
    nodes = config["available_node_types"]
    if nodes[config["head_node_type"]].get("resources", {}).get("CPU") != 0:
        _fail(where, "the head node type must declare resources: {CPU: 0}")
    gpu_nodes = {k: v for k, v in nodes.items() if v.get("resources", {}).get("GPU")}
    _check_images(where, {config["docker"]["image"]}, bool(gpu_nodes))
    capacity = {
        k: {
            "pods": v.get("max_workers", 0),
            "cpu": v["resources"].get("CPU", 0),
            "gpu": v["resources"].get("GPU", 0),
        }
        for k, v in nodes.items()
        if k != config["head_node_type"]
    }
    _workers_fit(where, yaml.safe_load((ROOT / recipe).read_text())["scaling"], capacity)


def check_dockerfile(path: Path) -> None:
    where = _name(path)
    text = path.read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.MULTILINE)
    expected = f"rayproject/ray:{ray_version()}-{PYTHON_TAG}-cpu"
    if not base or base.group(1) != expected:
        _fail(where, f"default base image should be {expected} (the pinned Ray and Python)")
    for line in re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE):
        sources = [s for s in line.split()[:-1] if not s.startswith("--")]
        for source in sources:
            if not (ROOT / source).exists():
                _fail(where, f"COPY source {source} does not exist")
    if not re.search(r"pip install .*\s\.(\s|$)", text):
        _fail(where, "the image must pip install the project (its pinned pyproject.toml)")
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for entry in (".venv", "mlruns", "data", "demo_out"):
        if entry not in ignored:
            _fail(".dockerignore", f"should exclude {entry}")


def check_no_credentials(path: Path) -> None:
    match = SECRET.search(path.read_text())
    if match:
        _fail(
            _name(path),
            f"looks like a credential ({match.group(0)}); "
            "use the instance role / service account / a Kubernetes Secret",
        )


CHECKS = {
    "kuberay/*.yaml": check_kuberay,
    "cluster-launcher/*.yaml": check_cluster_launcher,
    "docker/Dockerfile": check_dockerfile,
    "runtime_env.yaml": lambda p: check_runtime_env(p.name, yaml.safe_load(p.read_text())),
}
"""Which check validates which file under infra/."""


def checked_files() -> dict[Path, Any]:
    return {
        path: check for pattern, check in CHECKS.items() for path in sorted(INFRA.glob(pattern))
    }


def main() -> int:
    sys.path.insert(0, str(ROOT))
    problems = 0
    for path, check in checked_files().items():
        failed = 0
        for run in (check, check_no_credentials):
            try:
                run(path)
            except ManifestError as exc:
                failed += 1
                print(f"FAIL {exc}")
        if not failed:
            print(f"ok   {_name(path)}")
        problems += failed
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
