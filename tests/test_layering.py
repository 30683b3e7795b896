"""Dependency direction: ssast never imports ray/pipeline/jobs; pipeline never imports
ssast/jobs; nothing in the product imports jobs (STYLE.md, "Layout and dependency
direction"). Tests and benchmarks drive the jobs, so they may import them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "ssast": {"ray", "pipeline", "jobs", "mlflow"},
    "pipeline": {"ssast", "jobs"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(package: str, banned: set[str]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_roots(path):
            if name in banned or name.split(".")[0] in banned:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    assert offending(package, FORBIDDEN[package]) == []


def test_scanner_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import ray.train\nfrom pipeline.features import fbank\n")
    assert imported_roots(bad) == {"ray.train", "pipeline.features"}
