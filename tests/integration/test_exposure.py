"""What a local cluster and the MLflow UI the project starts expose to the network.

Ray 2.60's gRPC servers (GCS, raylet, object manager, workers, agent) listen on every
interface whatever the node address; token authentication (on by default for a local
cluster) is what guards them. This test pins that state down: the dashboard (and its job
API) and the MLflow UI on loopback only; every other listening socket either refuses a
client without the token or serves read-only Prometheus metrics.
"""

import http.client
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from jobs.kit.tracking import ui_command

from .conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
HOLD_CLUSTER = """
import time
from jobs.kit.cluster import init_ray
init_ray(1)
print("up", flush=True)
time.sleep(600)
"""
# A method of each of Ray's gRPC services (GCS, raylet, object manager, core worker,
# agent): a server answers UNIMPLEMENTED for the services it does not have.
RAY_SERVICES = [
    "ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "ray.rpc.NodeManagerService/GetNodeStats",
    "ray.rpc.ObjectManagerService/Pull",
    "ray.rpc.CoreWorkerService/GetCoreWorkerStats",
    "ray.rpc.ReporterService/HealthCheck",
    "ray.rpc.LogService/ListLogs",
]


def listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of root's tree."""
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            found = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in found:
            if c.status == psutil.CONN_LISTEN:
                out.append((p.name(), c.laddr.ip, c.laddr.port))
    return out


def http_get(host: str, port: int) -> tuple[int, bytes] | None:
    """(status, head of body), or None when the port does not speak HTTP/1."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=3)
        conn.request("GET", "/")
        r = conn.getresponse()
        return r.status, r.read(64)
    except (http.client.HTTPException, OSError):
        return None


def grpc_codes(host: str, port: int) -> list[str]:
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    codes = []
    for method in RAY_SERVICES:
        call = channel.unary_unary(
            f"/{method}", request_serializer=lambda _: b"", response_deserializer=bytes
        )
        try:
            call(None, timeout=5)
            codes.append("OK")
        except grpc.RpcError as err:
            codes.append(err.code().name)
    channel.close()
    return codes


def test_a_local_cluster_and_the_mlflow_ui_expose_nothing_unauthenticated(tmp_path):
    """The loopback-only dashboard serves its page; nothing else answers without the token."""
    port = free_port()
    ui = shlex.split(ui_command(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    ui[0] = str(Path(sys.executable).parent / "mlflow")
    ui[ui.index("--port") + 1] = str(port)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    cluster = subprocess.Popen(
        [sys.executable, "-c", HOLD_CLUSTER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    mlflow_ui = subprocess.Popen(
        ui, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert cluster.stdout.readline().strip() == "up"
        deadline = time.time() + 120
        while not (ui_sockets := listening(psutil.Process(mlflow_ui.pid))):
            assert time.time() < deadline and mlflow_ui.poll() is None, (
                "the MLflow UI did not start"
            )
            time.sleep(0.5)
        assert ui_sockets and {ip for _, ip, _ in ui_sockets} == {"127.0.0.1"}

        sockets = listening(psutil.Process(cluster.pid))
        exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
        pages = [http_get(ip, p) for _, ip, p in sockets if ip == "127.0.0.1"]
        assert any(a and a[0] == 200 and b"<!doctype html>" in a[1].lower() for a in pages)
        assert exposed  # gRPC on every interface: the checks below are not vacuous
        for name, ip, p in exposed:
            host = "127.0.0.1" if ipaddress.ip_address(ip).is_unspecified else ip
            answer = http_get(host, p)
            if answer is not None:  # HTTP: token-guarded, or Prometheus text only
                status, body = answer
                assert status == 401 or body.startswith(b"# "), (name, ip, p, answer)
                continue
            codes = grpc_codes(host, p)
            assert "OK" not in codes and "UNAUTHENTICATED" in codes, (name, ip, p, codes)
    finally:
        for proc in (cluster, mlflow_ui):  # each leads its own process group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
