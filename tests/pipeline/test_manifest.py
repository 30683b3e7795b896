"""Manifest formats, path resolution and clear errors."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.manifest import duplicate_rows, read_manifest


def test_csv_jsonl_parquet_and_directory_inputs_agree(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.wav", "y.flac"):
        (tmp_path / "a" / name).write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,label\na/x.wav,01\na/y.flac,02\n")
    (tmp_path / "m.jsonl").write_text(
        "\n".join(
            json.dumps({"path": p, "label": lab})
            for p, lab in [("a/x.wav", "01"), ("a/y.flac", "02")]
        )
    )
    pq.write_table(
        pa.table({"path": ["a/x.wav", "a/y.flac"], "label": ["01", "02"]}), tmp_path / "m.parquet"
    )
    tables = [read_manifest(str(tmp_path / f)) for f in ("m.csv", "m.jsonl", "m.parquet")]
    for t in tables:
        assert t.column("path").to_pylist() == ["a/x.wav", "a/y.flac"]
        assert t.column("uri").to_pylist() == [
            str(tmp_path / "a/x.wav"),
            str(tmp_path / "a/y.flac"),
        ]
        assert t.column("label").to_pylist() == ["01", "02"]  # not parsed as numbers
    listed = read_manifest(str(tmp_path / "a"))
    assert listed.column("uri").to_pylist() == [
        str(tmp_path / "a/x.wav"),
        str(tmp_path / "a/y.flac"),
    ]
    assert read_manifest(str(tmp_path / "a" / "*.flac")).num_rows == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,label\nx.wav,1\n", "no 'path' column"),
        ("path,fbank\nx.wav,1\n", "reserved column"),
        ("path,label\n", "lists no files"),
        ('path,label\n"x.wav,1\n', "m.csv cannot be parsed"),
        ("path,label\nx.wav,1,2\n", "m.csv cannot be parsed"),
    ],
)
def test_bad_manifests_are_clear_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_manifest(str(tmp_path / "m.csv"))


def test_unknown_manifest_type_and_empty_directory(tmp_path):
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown type"):
        read_manifest(str(tmp_path / "m.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        read_manifest(str(tmp_path / "empty"))


def test_names_that_are_not_utf8_are_skipped_and_the_rest_listed(tmp_path, caplog):
    (tmp_path / "ok.wav").write_bytes(b"x")
    with open(os.fsencode(tmp_path) + b"/caf\xe9.wav", "wb") as f:
        f.write(b"x")
    table = read_manifest(str(tmp_path))
    assert table.column("path").to_pylist() == [str(tmp_path / "ok.wav")]
    assert "skipping 1 files whose names are not UTF-8" in caplog.text


def test_duplicate_rows_are_counted():
    rows = pa.table({"uri": ["a", "b", "a", "a"], "start_s": [0.0, 0.0, 0.0, 1.0]})
    assert duplicate_rows(rows) == 1
