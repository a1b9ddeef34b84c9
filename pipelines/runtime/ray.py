"""Ray in one place: join the cluster named by config or RAY_ADDRESS, else start a local one.

`ray job submit` sets RAY_ADDRESS, so a submitted job joins its cluster; a plain `python jobs/X.py`
starts a private local cluster (address="local", so it never attaches to somebody else's
`ray start` by accident) with the dashboard, when on, bound to loopback.
"""

from __future__ import annotations

import os
import sys

from pipelines.config import Config
from pipelines.errors import UserError, user_error_in

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    common = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        ray.init(address=address, **common)
        return
    dashboard = {}
    if cfg.ray.include_dashboard:
        # The State API behind it is found by auto-detecting "the" cluster of this machine, which
        # fails once two run here: name this one's, for the driver and (runtime env) its workers.
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        os.environ[API_SERVER_ENV] = url
        dashboard = {"dashboard_port": port, "runtime_env": {"env_vars": {API_SERVER_ENV: url}}}
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        object_store_memory=(cfg.ray.object_store_memory_mb or 0) * 2**20 or None,
        include_dashboard=cfg.ray.include_dashboard,
        dashboard_host="127.0.0.1",
        **dashboard,
        **common,
    )


def shutdown_ray() -> None:
    """Disconnect, and stop a local cluster."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0))


def autoscaler_node_groups() -> list[tuple[str, dict[str, float], int]]:
    """(name, resources of one node, max_count; -1 unbounded) of each node type the autoscaler may
    start, as it reports them to the GCS (the cluster config Ray Data's autoscaler reads too); []
    for a fixed cluster."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    return [
        (g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
        for g in (config.node_group_configs if config else ())
        if g.resources and g.max_count != 0
    ]


def run_as_task(fn, *args, num_cpus: float):
    """fn(*args) in a Ray task of `num_cpus` CPUs, placed where Ray has them (not the driver's
    node); its result, or a UserError raised in it as itself - one line, not Ray's wrapper holding
    the remote traceback."""
    import ray

    try:
        return ray.get(ray.remote(fn).options(num_cpus=num_cpus).remote(*args))
    except UserError as exc:
        raise user_error_in(exc) from None
