"""The evaluation suite: deterministic, balanced, readable, and its test conditions unseen."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.audio import decode
from pipeline.manifest import read_manifest
from pipeline.suite import CLASSES, DURATION_S, POOL_DURATION_S, write_suite

TASKS = ("events", "instruments", "rhythms")
SMALL = {"scale": 0.1, "pool_clips": 10}
PER_CLASS = {"train": 4, "valid": 1, "test": 2}  # round(40, 8, 16 x 0.1)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """(root, manifests) of one small suite, seed 0."""
    root = tmp_path_factory.mktemp("suite")
    return root, write_suite(root, seed=0, **SMALL)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def rows(manifest: Path) -> list[dict]:
    return read_manifest(str(manifest)).to_pylist()


def test_same_seed_same_bytes_and_another_seed_other_audio(suite, tmp_path):
    root, _ = suite
    first = files(root)
    write_suite(tmp_path / "again", seed=0, **SMALL)
    assert files(tmp_path / "again") == first
    write_suite(tmp_path / "other", seed=1, **SMALL)
    other = files(tmp_path / "other")
    assert other.keys() == first.keys()  # same layout and counts ...
    wavs = [k for k in first if k.endswith(".wav")]
    assert len(wavs) == 3 * 8 * sum(PER_CLASS.values()) + SMALL["pool_clips"]
    assert all(other[k] != first[k] for k in wavs)  # ... but new audio
    assert other["events/manifest.csv"] != first["events/manifest.csv"]


def test_returned_manifests_and_suite_yaml(suite):
    root, manifests = suite
    assert manifests == {t: root / t / "manifest.csv" for t in (*TASKS, "pool")}
    doc = yaml.safe_load((root / "suite.yaml").read_text())
    assert list(doc["tasks"]) == list(TASKS)
    for task, spec in doc["tasks"].items():
        assert root / spec["manifest"] == manifests[task]
        assert spec["classes"] == list(CLASSES[task]) and spec["description"]
    assert root / doc["pool"] == manifests["pool"]


@pytest.mark.parametrize("task", TASKS)
def test_every_split_holds_every_class_equally_often(suite, task):
    assert len(CLASSES[task]) == 8  # as documented in docs/evaluation_suite.md
    table = rows(suite[1][task])
    counts = Counter((r["split"], r["label"]) for r in table)
    expected = {(s, c): n for s, n in PER_CLASS.items() for c in CLASSES[task]}
    assert counts == expected


@pytest.mark.parametrize("task", TASKS)
def test_test_conditions_are_unseen_in_train_and_valid(suite, task):
    table = rows(suite[1][task])
    seen = {r["condition"] for r in table if r["split"] in ("train", "valid")}
    unseen = {r["condition"] for r in table if r["split"] == "test"}
    assert seen and unseen and not seen & unseen
    # Stronger: neither the source nor the room of a test clip occurs in training.
    for part in (0, 1):
        assert not {c.split("@")[part] for c in seen} & {c.split("@")[part] for c in unseen}


def test_manifests_read_and_every_file_decodes_at_its_declared_length(suite):
    root, manifests = suite
    for task, manifest in manifests.items():
        table = read_manifest(str(manifest))
        extra = ["label", "split", "condition"] if task != "pool" else []
        assert table.column_names == ["path", *extra, "uri", "row_index"]
        lo, hi = POOL_DURATION_S if task == "pool" else DURATION_S[task]
        for uri in table.column("uri").to_pylist():
            samples, rate = decode(Path(uri).read_bytes())
            assert samples.shape[1] == 1 and rate in (16000, 22050, 44100)
            assert lo - 1 / rate <= samples.shape[0] / rate <= hi, uri
            peak = float(np.abs(samples).max())
            assert 0.05 < peak < 0.9, uri  # peak-normalised: audible, never clipped


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seed": -1}, "seed"), ({"scale": 0}, "scale"), ({"pool_clips": 0}, "pool_clips")],
)
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_suite(tmp_path, **kwargs)
