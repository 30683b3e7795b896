"""Dependency direction (STYLE.md, "Layout and dependency direction"): ssast never imports
ray/pipeline/jobs (one documented exception: EXCEPTIONS); pipeline never imports
ssast/jobs; nothing outside tests/ and bench/ imports jobs; no import cycle inside a
package; each job's environment equals the runtime_env the cluster manifests ship."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "ssast": {"ray", "pipeline", "jobs", "mlflow"},
    "pipeline": {"ssast", "jobs"},
    "infra": {"jobs"},
}
"""package -> the top-level modules it must not import (tests/ and bench/ may import all)."""

EXCEPTIONS = {
    # The HEAR API takes raw audio and must featurize it exactly as the model was trained:
    # it reuses the pipeline's pure torch/numpy feature and normalisation modules. No other
    # ssast module, and no other pipeline module, is allowed.
    "ssast/hear.py": {"pipeline.features", "pipeline.normalization"},
}
"""file -> the exact forbidden modules it may import anyway (documented exceptions)."""


def imported_roots(path: Path) -> set[str]:
    """Absolute imports of a file, deferred ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _walk(node: ast.AST):
    """ast.walk without ``if TYPE_CHECKING:`` blocks (imports for type hints only)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
            continue
        yield from _walk(child)


def offending(
    package: str,
    banned: set[str],
    root: Path = ROOT,
    exceptions: dict[str, set[str]] = EXCEPTIONS,
) -> list[str]:
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        where = path.relative_to(root).as_posix()
        for name in imported_roots(path) - exceptions.get(where, set()):
            if name in banned or name.split(".")[0] in banned:
                bad.append(f"{where} imports {name}")
    return bad


def import_cycles(package: str, root: Path = ROOT) -> list[list[str]]:
    """Cycles among a package's modules, counting every import (also deferred ones)."""
    modules = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (root / package).rglob("*.py")
    }
    graph = {
        m: {n for n in imported_roots(p) if n in modules and n != m} for m, p in modules.items()
    }
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    assert offending(package, FORBIDDEN[package]) == []


@pytest.mark.parametrize("package", ["ssast", "pipeline", "jobs"])
def test_no_import_cycles(package):
    assert import_cycles(package) == []


def test_scanner_catches_a_forbidden_import_and_a_cycle(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import ray.train\nfrom pipeline.features import fbank\n")
    assert imported_roots(bad) == {"ray.train", "pipeline.features"}
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import g\n")
    assert import_cycles("pkg", tmp_path) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_the_hear_exception_is_narrow(tmp_path):
    pkg = tmp_path / "ssast"
    pkg.mkdir()
    (pkg / "hear.py").write_text(
        "from pipeline.features import FbankExtractor\n"
        "from pipeline.normalization import Normalization\n"
        "from pipeline.batches import to_model_input\n"
        "from pipeline import schema\n"
        "import jobs.kit.models\n"
    )
    (pkg / "model.py").write_text("from pipeline.features import FeatureConfig\n")
    assert sorted(offending("ssast", FORBIDDEN["ssast"], tmp_path)) == [
        "ssast/hear.py imports jobs.kit.models",
        "ssast/hear.py imports pipeline",
        "ssast/hear.py imports pipeline.batches",
        "ssast/model.py imports pipeline.features",
    ]


def test_jobs_environment_matches_the_runtime_env():
    from jobs.kit.cluster import RAY_ENV_DEFAULTS

    shipped = yaml.safe_load((ROOT / "infra" / "runtime_env.yaml").read_text())["env_vars"]
    assert RAY_ENV_DEFAULTS.items() <= shipped.items()
