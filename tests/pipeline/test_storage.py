"""The output lock: one writer at a time, a dead writer's lock taken over."""

import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.storage import OutputBusyError, OutputLock

HOLD = """
import sys, time
from pipeline.storage import OutputLock
with OutputLock(sys.argv[1], beat_s=0.2):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_job_is_refused_while_the_first_lives_and_resumes_once_it_died(tmp_path):
    out = tmp_path / "ds"
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\na.wav\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = os.environ | {"PYTHONPATH": root}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            featurize(str(manifest), str(out), FeaturizeConfig())  # refused before any work
        first = json.loads((out / "_lock.json").read_text())["time"]
        time.sleep(0.6)
        assert json.loads((out / "_lock.json").read_text())["time"] > first  # heartbeat
    finally:
        holder.kill()
        holder.wait()
    assert (out / "_lock.json").exists()  # a killed job leaves its lock behind ...
    with OutputLock(str(out)):  # ... which its rerun takes over (dead pid, same host)
        assert json.loads((out / "_lock.json").read_text())["pid"] == os.getpid()
    assert not (out / "_lock.json").exists()


def test_a_lock_without_heartbeat_is_stale_after_stale_s(tmp_path):
    (tmp_path / "_lock.json").write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "time": time.time() - 5})
    )
    with pytest.raises(OutputBusyError, match="host elsewhere"):
        OutputLock(str(tmp_path), stale_s=60).__enter__()
    with OutputLock(str(tmp_path), stale_s=1):
        pass
