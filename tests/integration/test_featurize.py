"""The featurization job on a real local Ray: outputs, statistics, reruns, kills, S3."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import soundfile as sf

from pipeline.features import FeatureConfig
from pipeline.featurize import FeaturizeConfig, featurize, stream_features
from pipeline.schema import load_dataset_info

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def read_all(root: str, sub: str):
    fs = s3fs.S3FileSystem() if root.startswith("s3://") else None
    return pq.read_table(f"{root}/{sub}".removeprefix("s3://"), filesystem=fs)


def kill_session(sid: int, timeout_s: float = 60.0) -> None:
    """SIGKILL every process of session ``sid`` and wait until none is left: a driver
    started with ``start_new_session`` and its local Ray, whose workers run in process
    groups of their own (``killpg`` of the driver's group misses them, and a worker
    finishing its task could still commit a shard after the kill)."""
    import psutil

    deadline = time.time() + timeout_s
    while True:
        left = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    left.append(p.pid)
            except (psutil.Error, OSError):  # gone meanwhile
                pass
        if not left:
            return
        assert time.time() < deadline, f"processes {left} of the killed job outlived it"
        time.sleep(0.2)


def assert_shards_hold_their_rows(root: str, manifest: str, per_shard: int) -> None:
    """Shard k's features and errors hold exactly manifest rows k*S .. k*S+S-1: each task
    was given its own rows (and only those: no task receives the manifest)."""
    from pipeline.manifest import read_manifest

    paths = read_manifest(manifest).column("path").to_pylist()
    fs = s3fs.S3FileSystem() if root.startswith("s3://") else None
    base = root.removeprefix("s3://")
    for k in range(-(-len(paths) // per_shard)):
        held = [
            pq.read_table(f"{base}/{sub}/part-{k:06d}.parquet", filesystem=fs)
            .column("path")
            .to_pylist()
            for sub in ("features", "errors")
        ]
        assert sorted(held[0] + held[1]) == sorted(paths[k * per_shard : (k + 1) * per_shard])


def test_featurize_writes_features_errors_and_statistics(ray_session, sample_corpus, tmp_path):
    manifest, good = sample_corpus
    out = str(tmp_path / "ds")
    summary = featurize(str(manifest), out, FeaturizeConfig(clips_per_shard=8))
    feats, errors = read_all(out, "features"), read_all(out, "errors")
    assert feats.num_rows == good and errors.num_rows == 6
    wanted = [
        line.split(",")[0] for line in manifest.read_text().splitlines()[1:] if "broken" not in line
    ]
    assert sorted(feats.column("path").to_pylist()) == sorted(wanted)
    info = load_dataset_info(out, expected=FeatureConfig())
    assert info.num_rows == good and info.num_errors == 6
    assert summary.info["errors_by_reason"] == {
        "unreadable": 2,
        "empty_file": 1,
        "missing": 1,
        "non_finite": 1,
        "zero_sample_rate": 1,
    }
    values = np.concatenate([np.asarray(v, np.float64) for v in feats.column("fbank").to_pylist()])
    assert info.mean == pytest.approx(values.mean(), abs=1e-6)
    assert info.std == pytest.approx(values.std(), rel=1e-6)
    assert info.hours == pytest.approx(sum(feats.column("duration_s").to_pylist()) / 3600)
    meta = pq.read_schema(next((tmp_path / "ds" / "features").glob("*.parquet"))).metadata
    assert b"ssast.dataset" in meta
    assert_shards_hold_their_rows(out, str(manifest), 8)


def test_rerun_is_idempotent_and_other_configs_are_refused(ray_session, sample_corpus, tmp_path):
    manifest, good = sample_corpus
    out = str(tmp_path / "ds")
    featurize(str(manifest), out, FeaturizeConfig(clips_per_shard=8))
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").rglob("*.parquet")}
    again = featurize(str(manifest), out, FeaturizeConfig(clips_per_shard=8))
    assert again.shards_done_now == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").rglob("*.parquet")} == files
    assert read_all(out, "features").num_rows == good
    other = FeaturizeConfig(clips_per_shard=8, features=FeatureConfig(num_mel_bins=64))
    with pytest.raises(ValueError, match="different run"):
        featurize(str(manifest), out, other)
    with pytest.raises(ValueError, match="num_mel_bins"):
        load_dataset_info(out, expected=FeatureConfig(num_mel_bins=64))
    # The same files with one label changed: another run, the column named.
    with open(manifest, newline="") as f:
        rows = list(csv.reader(f))
    rows[1][rows[0].index("label")] += "_renamed"
    changed = Path(manifest).with_name("relabelled.csv")
    with open(changed, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=r"manifest columns \['label'\]"):
        featurize(str(changed), out, FeaturizeConfig(clips_per_shard=8))


def test_killed_job_reruns_to_completion_without_duplicates(ray_session, tmp_path):
    from pipeline.synth import write_corpus

    manifest = write_corpus(
        tmp_path / "c", num_clips=60, duration_s=(4.0, 6.0), seed=5, broken=False
    )
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "featurize.py"),
        "--input",
        str(manifest),
        "--output",
        str(out),
        "--num-cpus",
        "1",
        "clips_per_shard=4",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 2:
        time.sleep(0.2)
    kill_session(proc.pid)  # the driver and its local Ray, mid-run
    proc.wait()
    committed = len(list((out / "_shards").glob("*.json")))
    assert 2 <= committed < 15, "the kill must land mid-run"
    assert not (out / "dataset.json").exists()
    summary = featurize(str(manifest), str(out), FeaturizeConfig(clips_per_shard=4))
    assert summary.shards_done_now == 15 - committed
    ids = read_all(str(out), "features").column("clip_id").to_pylist()
    assert len(ids) == 60 and len(set(ids)) == 60
    assert not list(out.rglob("*.tmp-*"))


def test_s3_round_trip(ray_session, sample_corpus, s3_endpoint):
    manifest, good = sample_corpus
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="audio")
    base = manifest.parent
    for path in base.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "audio", f"corpus/{path.relative_to(base)}")
    out = "s3://audio/features/v1"
    summary = featurize("s3://audio/corpus/manifest.csv", out, FeaturizeConfig(clips_per_shard=8))
    assert summary.info["num_rows"] == good
    feats = read_all(out, "features")
    assert feats.num_rows == good
    assert feats.column("uri").to_pylist()[0].startswith("s3://audio/corpus/audio/")
    assert set(read_all(out, "errors").column("reason").to_pylist()) >= {"missing", "unreadable"}
    assert load_dataset_info(out).num_rows == good
    assert_shards_hold_their_rows(out, "s3://audio/corpus/manifest.csv", 8)


def test_large_s3_files_are_streamed_by_ranged_reads(s3_endpoint, tmp_path, monkeypatch):
    """A remote file over STREAM_MB is decoded block by block from ranged reads (never held
    whole), with the features of the local file bit for bit; its size alone makes a file
    over the cap too_large (nothing downloaded); a prefix is not_a_file."""
    import pipeline.clips as clips

    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal((44100 * 10, 2))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, 44100, subtype="FLOAT")  # 3.4 MB
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="long")
    s3.upload_file(str(path), "long", "a/long.wav")
    monkeypatch.setattr(clips, "STREAM_MB", 1.0)
    monkeypatch.setattr(clips, "REMOTE_BLOCK_MB", 0.25)
    uri = "s3://long/a/long.wav"
    streamed, prefix, missing = clips.fetch([uri, "s3://long/a", "s3://long/none.wav"])
    assert isinstance(streamed, clips.RemoteFile) and streamed.size == path.stat().st_size
    assert (prefix.reason, missing.reason) == ("not_a_file", "missing")
    assert clips.fetch([uri], max_file_mb=2.0)[0].reason == "too_large"
    cfg = FeatureConfig(segment_s=4.0)
    remote, errors = clips.featurize_table(pa.table({"path": [uri], "uri": [uri]}), cfg)
    local, _ = clips.featurize_table(pa.table({"path": [str(path)], "uri": [str(path)]}), cfg)
    assert errors.num_rows == 0 and remote.num_rows == 3
    assert remote.column("fbank").equals(local.column("fbank"))


def test_streaming_mode_yields_the_same_features(ray_session, sample_corpus, tmp_path):
    manifest, good = sample_corpus
    rows = stream_features(str(manifest), FeatureConfig(), batch_size=8).take_all()
    assert len(rows) == good
    out = str(tmp_path / "ds")
    featurize(str(manifest), out, FeaturizeConfig(clips_per_shard=8))
    stored = {r["clip_id"]: r for r in read_all(out, "features").to_pylist()}
    for row in rows:
        np.testing.assert_array_equal(
            np.asarray(row["fbank"]), np.asarray(stored[row["clip_id"]]["fbank"])
        )
