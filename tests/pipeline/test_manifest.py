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


def test_a_nested_directory_lists_exactly_its_audio_files_sorted(tmp_path, monkeypatch):
    """Walked folder by folder into Arrow chunks (3 paths each here), then sorted: nested
    folders, any case of extension, a symlink to a file; not other files, a folder named
    like audio, or a symlinked folder (not followed, so a link back up cannot loop)."""
    import pipeline.manifest as manifest

    monkeypatch.setattr(manifest, "CHUNK_ROWS", 3)
    audio = ["b.WAV", "a/z.flac", "a/deep/er/x.Mp3", "a/deep/y.ogg", "c/1.wav", "c/2.AIFF"]
    others = ["notes.txt", "a/x.wav.txt", "a/wav", "c/.DS_Store", "takes.wav/readme.md"]
    for name in audio + others:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "s.opus").write_bytes(b"")
    (tmp_path / "in" / "a" / "s.opus").symlink_to(tmp_path / "elsewhere" / "s.opus")
    (tmp_path / "in" / "linked.wav").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "in" / "a" / "deep" / "up").symlink_to(tmp_path / "in" / "a")
    table = read_manifest(str(tmp_path / "in"))
    wanted = sorted(str(tmp_path / "in" / n) for n in [*audio, "a/s.opus"])
    assert table.column("path").to_pylist() == wanted
    assert table.column("row_index").to_pylist() == list(range(len(wanted)))
