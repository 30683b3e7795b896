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


def window_rows(row: dict, starts: list[int], T: int) -> pa.Table:
    """Each window of a feature row as a row of its own (the reference: the cut path)."""
    F = row["num_mel_bins"]
    fbank = np.asarray(row["fbank"], np.float16).reshape(-1, F)
    parts = [fbank[s : s + T] for s in starts]
    return pa.table(
        {
            "path": [f"{row['path']}#{s}" for s in starts],
            "fbank": pa.array([p.reshape(-1) for p in parts], pa.list_(pa.float16())),
            "num_frames": pa.array([len(p) for p in parts], pa.int32()),
            "num_mel_bins": pa.array([F] * len(parts), pa.int32()),
        }
    )


def test_long_clips_are_the_mean_of_their_windows_and_timestamps_list_them(corpus):
    """A 200-frame clip with a 64-frame model and a hop of 24: windows at 0, 24, ..., 144
    (the last reaches the end, padded); scores are the mean of the windows' scores, each
    window predicted alone by the plain (cut) path; a short clip is one window."""
    _, features, _, payload = corpus
    rows = features.to_pylist()
    long = dict(rows[0])
    F = long["num_mel_bins"]
    frames = np.concatenate([np.asarray(r["fbank"]).reshape(-1, F) for r in rows])[:200]
    long.update(path="long.wav", fbank=frames.reshape(-1).tolist(), num_frames=200)
    short = next(r for r in rows if r["num_frames"] <= 64)
    batch = pa.Table.from_pylist([long, short], schema=features.schema)
    starts = [0, 24, 48, 72, 96, 120, 144]

    windowed = Predictor(payload, "scores", PREPARE, hop=24)(batch).to_pylist()
    alone = Predictor(payload, "scores", PREPARE)(window_rows(long, starts, 64))
    expected = np.mean(alone.column("scores").to_pylist(), axis=0)
    np.testing.assert_allclose(windowed[0]["scores"], expected, atol=1e-5)
    one = Predictor(payload, "scores", PREPARE)(batch.slice(1, 1)).to_pylist()[0]
    np.testing.assert_allclose(windowed[1]["scores"], one["scores"], atol=1e-6)

    stamps = Predictor(payload, "timestamps", PREPARE, top_k=2, hop=24, frame_shift_s=0.01)
    got = stamps(batch)
    assert got.column("path").to_pylist() == ["long.wav"] * 7 + [short["path"]]
    assert got.column("window_index").to_pylist() == [0, 1, 2, 3, 4, 5, 6, 0]
    np.testing.assert_allclose(got.column("window_start_s").to_pylist()[:7], np.array(starts) / 100)
    ends = [min(s + 64, 200) / 100 for s in starts] + [short["num_frames"] / 100]
    np.testing.assert_allclose(got.column("window_end_s").to_pylist(), ends)
    labels = Predictor(payload, "labels", PREPARE, top_k=2)(window_rows(long, starts, 64))
    assert got.column("top_labels").to_pylist()[:7] == labels.column("top_labels").to_pylist()


def test_timestamps_keep_one_null_row_per_broken_file(corpus):
    rows, _, errors, payload = corpus
    got = Predictor(
        payload, "timestamps", PREPARE, hop=32, source="audio", features=FeatureConfig()
    )(rows)
    bad = got.filter(got.column("reason").is_valid())
    assert sorted(bad.column("path").to_pylist()) == sorted(errors.column("path").to_pylist())
    assert bad.column("window_start_s").null_count == bad.num_rows
    good = got.filter(got.column("reason").is_null())
    assert good.column("top_labels").null_count == 0 and good.num_rows >= rows.num_rows - 2
