"""The prediction actor without Ray: its three kinds of input give the same predictions."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.inference.predictor import Predictor, read_feature_file
from pipeline.batches import ModelInput
from pipeline.clips import featurize_table
from pipeline.features import FeatureConfig
from pipeline.manifest import read_manifest
from pipeline.normalization import Normalization
from pipeline.synth import CLASSES, write_corpus
from ssast import SSASTClassifier, SSASTConfig
from ssast.checkpoint import checkpoint_payload

PREPARE = ModelInput(64, Normalization(-4.0, 4.0))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(manifest rows incl. broken files, their feature rows, a classifier payload)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = read_manifest(str(write_corpus(root, num_clips=10, duration_s=(0.5, 1.0), seed=3)))
    features, errors = featurize_table(rows, FeatureConfig())
    assert errors.num_rows > 0  # the corpus carries broken files
    torch.manual_seed(0)
    model = SSASTClassifier(
        SSASTConfig(size="tiny", input_tdim=64, num_masked=1), len(CLASSES), "mean"
    )
    task = {"class_names": list(CLASSES), "multilabel": False}
    return rows, features, errors, checkpoint_payload(model, {"task": task})


def by_path(table: pa.Table) -> dict:
    return {r["path"]: r for r in table.to_pylist()}


def test_audio_rows_and_files_agree(corpus, tmp_path):
    rows, features, errors, payload = corpus
    from_rows = Predictor(payload, "labels", PREPARE, top_k=3)(features)
    from_audio = Predictor(
        payload, "labels", PREPARE, top_k=3, source="audio", features=FeatureConfig()
    )(rows)
    shard = tmp_path / "part-000000.parquet"
    pq.write_table(features, shard)
    read = {
        "columns": ["path", "fbank", "num_frames", "num_mel_bins"],
        "where": None,
        "batch_size": 4,
    }  # several model batches per shard
    from_files = Predictor(payload, "labels", PREPARE, top_k=3, source="files", read=read)(
        pa.table({"file": [str(shard)]})
    )

    assert from_rows.num_rows == from_files.num_rows == features.num_rows
    # Audio input keeps one row per bad file, with its reason and null predictions.
    assert from_audio.num_rows == features.num_rows + errors.num_rows
    bad = from_audio.filter(from_audio.column("reason").is_valid())
    assert sorted(bad.column("path").to_pylist()) == sorted(errors.column("path").to_pylist())
    assert bad.column("top_labels").null_count == bad.num_rows
    good = by_path(from_audio.filter(from_audio.column("reason").is_null()))
    files = by_path(from_files)
    for path, row in by_path(from_rows).items():
        for other in (good[path], files[path]):
            assert other["top_labels"] == row["top_labels"]
            np.testing.assert_allclose(other["top_scores"], row["top_scores"], atol=1e-6)


def test_read_feature_file_selects_columns_and_rows(tmp_path):
    shard = tmp_path / "s.parquet"
    pq.write_table(
        pa.table({"path": ["a", "b", "c"], "split": ["test", "train", "test"], "x": [1, 2, 3]}),
        shard,
    )
    got = read_feature_file(str(shard), ["path", "x", "missing"], ("split", "test"))
    assert got.column_names == ["path", "x"]
    assert got.column("path").to_pylist() == ["a", "c"]
    assert read_feature_file(str(shard), ["path"], ("split", "valid")).num_rows == 0
    with pytest.raises(ValueError, match="no column 'fold'"):
        read_feature_file(str(shard), ["path"], ("fold", "1"))


def test_inputs_must_match_the_source():
    with pytest.raises(ValueError, match="source='files'"):
        Predictor(
            checkpoint_payload(
                SSASTClassifier(SSASTConfig(size="tiny", input_tdim=64, num_masked=1), 3)
            ),
            "labels",
            PREPARE,
            source="files",
        )
