"""Joining the Ray cluster a job runs on, or starting a local one."""

from __future__ import annotations

import os

RAY_ENV_DEFAULTS = {
    # Ray Data 2.60 starts 32 Parquet footer-reader actors per read; on small clusters
    # that costs seconds per pass over the data. 4 is plenty for our shard counts.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "4",
}
"""Environment every Ray process of ours gets (infra/runtime_env.yaml sets the same; a
test keeps the two equal)."""


_LOCAL_CPUS: list[int] = []
"""The CPUs of the local Ray that :func:`init_ray` started (empty: it joined one)."""


def local_cpus() -> int | None:
    """CPUs of the local Ray this process started, None when it joined a cluster (or a
    Ray someone else started, as a test does): the machine a job may fill by default."""
    return _LOCAL_CPUS[-1] if _LOCAL_CPUS else None


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster this job runs on, or start a local one.

    Under ``ray job submit`` (or with RAY_ADDRESS set) this connects to that cluster;
    otherwise it starts a local Ray with this machine's CPUs (``num_cpus`` overrides).
    """
    import ray

    if ray.is_initialized():
        return
    # Only what this process's environment lacks: under `ray job submit` the job's
    # runtime_env (infra/runtime_env.yaml) already sets these, and Ray refuses a driver
    # runtime_env that repeats a key of the job's.
    missing = {k: v for k, v in RAY_ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(missing)
    env = {"env_vars": missing} if missing else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env)
    else:
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs
        # to free a run's worker resources when its controller dies (a trial that Tune's
        # ASHA stops); without it those CPUs stay reserved and later trials never start.
        # The dashboard (and its job API) on loopback only; Ray 2.60's gRPC servers listen
        # on every interface whatever the node address, behind token authentication.
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=env,
        )
        _LOCAL_CPUS.append(int(ray.cluster_resources().get("CPU", 1)))
