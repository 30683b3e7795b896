"""Driver of the multi-node fault test, run in its own process (it owns a Ray cluster).

    python multinode_fault.py DATA STORAGE MLFLOW_URI

Starts a head and a training node with ray.cluster_utils.Cluster, pretrains with two
workers pinned to the training node, kills that node a few seconds after the first
checkpoint, adds a replacement, and prints the result as JSON.
"""

import glob
import json
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from jobs.kit.config import load_config
from jobs.pretraining.config import PretrainConfig
from jobs.pretraining.driver import run_pretraining

data, storage, uri = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
trainer_node = cluster.add_node(num_cpus=2, resources={"trainer": 2})
cluster.wait_for_nodes()
ray.init(
    address=cluster.address, runtime_env={"env_vars": {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2"}}
)
events = {}


cfg = load_config(
    PretrainConfig,
    None,
    [
        "model.input_tdim=256",
        "model.num_masked=100",
        "train.batch_size=4",
        "train.log_every=5",
        "train.checkpoint_every=10",
        "train.image_every=0",
        "optim.warmup_steps=3",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.worker_resources={trainer: 1}",
        "train.max_steps=40",
        "name=fault",
        f"mlflow.tracking_uri={uri}",
        "data.limit=8",
    ],
)
outcome = {}


def train() -> None:
    try:
        outcome["result"] = run_pretraining(data, storage, cfg)
    except BaseException as err:  # reported by the main thread
        outcome["error"] = err


# Training runs in a thread: Cluster.add_node must be called from the main thread.
worker = threading.Thread(target=train, daemon=True)
worker.start()
while not glob.glob(f"{storage}/fault/step_00000010/state.pt"):
    if not worker.is_alive():
        break
    time.sleep(0.1)
if worker.is_alive():
    time.sleep(3)  # let the controller register the reported checkpoint (2 s health poll)
    cluster.remove_node(trainer_node, allow_graceful=False)
    events["removed_at"] = time.time()
    time.sleep(2)
    cluster.add_node(num_cpus=2, resources={"trainer": 2})
    events["replaced_at"] = time.time()
worker.join()
if "error" in outcome:
    raise outcome["error"]
result = outcome["result"]
print(json.dumps({"steps": result.steps, "run_id": result.mlflow_run_id, **events}))
ray.shutdown()
cluster.shutdown()
