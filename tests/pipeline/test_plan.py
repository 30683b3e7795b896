"""Planning a featurization run on the driver: shard sizes by manifest size, the plan
without Ray or audio, and shard tasks that refuse anything but whole shards."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.featurize import main
from pipeline.featurize import FeaturizeConfig, _process_shards, plan_featurize, shard_size


def test_shards_grow_with_the_manifest_to_about_a_thousand_shards():
    assert [shard_size(n) for n in (1, 128, 131_072)] == [128, 128, 128]
    assert shard_size(131_073) == 256
    assert shard_size(1_000_000) == 1024 and -(-1_000_000 // 1024) == 977
    assert shard_size(10_000_000) == 1024  # capped: feature files of ~200 MB for 10 s clips


def test_dry_run_plans_a_large_manifest_without_ray_or_audio(tmp_path, capsys):
    n = 140_000
    paths = pa.array([f"clips/{i:07d}.wav" for i in range(n)])
    pq.write_table(pa.table({"path": paths}), tmp_path / "m.parquet")
    plan = plan_featurize(str(tmp_path / "m.parquet"), FeaturizeConfig())
    assert (plan.cfg.clips_per_shard, plan.num_shards, plan.duplicates) == (256, 547, 0)
    assert plan.manifest.column("uri")[n - 1].as_py() == f"{tmp_path}/clips/{n - 1:07d}.wav"
    out = tmp_path / "ds"
    assert main(["--input", str(tmp_path / "m.parquet"), "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    printed = json.loads(text[text.index("{") :])
    assert printed["num_shards"] == 547 and printed["shards_committed"] == 0
    assert not out.exists()  # nothing written


def test_a_shard_task_refuses_a_partial_shard(tmp_path):
    rows = pa.table({"path": ["a.wav"] * 5, "uri": ["/nonexistent/a.wav"] * 5})
    rows = rows.append_column("row_index", pa.array(np.arange(5, dtype=np.int64)))
    cfg = FeaturizeConfig(clips_per_shard=4)
    with pytest.raises(RuntimeError, match="shard 0 arrived with 3 of its 4 rows"):
        _process_shards(rows.slice(1, 3), cfg=cfg, root=str(tmp_path), num_inputs=5)
    done = _process_shards(rows, cfg=cfg, root=str(tmp_path), num_inputs=5)
    assert done.column("shard").to_pylist() == [0, 1]
    errors = [pq.read_table(tmp_path / f"errors/part-00000{k}.parquet") for k in (0, 1)]
    assert [e.num_rows for e in errors] == [4, 1]  # each shard its own rows: all missing
