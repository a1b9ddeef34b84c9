"""Can the cluster place the training workers - now, once the autoscaler adds nodes, or never?

A GPU cluster usually starts with no GPU node at all (KubeRay `replicas: 0`, `ray up`
`min_workers: 0`): counting live GPUs at submit time would refuse every job. So the check reads
two things:
  - the live nodes (`ray.nodes()`), and
  - the node types the autoscaler may start, as it reports them to the GCS (the cluster config
    Ray Data's autoscaler reads too: each group's resources and `max_count`, -1 = unbounded).
It fails in one line only when no node the cluster has or could start hosts the workers; when
only nodes still to be started could, it asks the autoscaler for them and waits, printing
"waiting for ...", up to `<section>.placement_timeout_s`.

The arithmetic (pipelines/runtime/cluster.py) is pure, so a test can describe any cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipelines.config import LoopConfig
from pipelines.errors import UserError
from pipelines.runtime.cluster import Cluster, current_cluster, placeable_ever, placeable_now

POLL_S = 5.0  # how often the wait looks at the nodes again (a GPU node boots in minutes)


def worker_resources(loop: LoopConfig) -> dict[str, float]:
    return {"CPU": float(loop.cpus_per_worker), **({"GPU": 1.0} if loop.use_gpu else {})}


def verdict(cluster: Cluster, loop: LoopConfig, section: str) -> str:
    """'now', 'later' (once the autoscaler adds nodes) or raises the one-line UserError."""
    need = worker_resources(loop)
    if placeable_now(cluster, need) >= loop.min_workers:  # an elastic run starts with what it can get
        return "now"
    if placeable_ever(cluster, need) >= loop.min_workers:
        return "later"
    want = f"{loop.min_workers} workers x ({loop.cpus_per_worker} CPU" + (", 1 GPU)" if loop.use_gpu else ")")
    no_gpu_anywhere = not any(n.get("GPU") for n in cluster.live) and not any(
        g.resources.get("GPU") for g in cluster.groups
    )
    key = "use_gpu" if loop.use_gpu and no_gpu_anywhere else "num_workers"
    raise UserError(
        f"config key '{section}.{key}': {want} cannot be placed on this Ray cluster, "
        f"not even after autoscaling ({cluster.describe()})"
    )


def waiting_line(cluster: Cluster, loop: LoopConfig) -> str:
    need = worker_resources(loop)
    missing = loop.min_workers - placeable_now(cluster, need)
    what = f"{missing} GPUs" if loop.use_gpu else f"{missing * loop.cpus_per_worker} CPUs"
    return f"waiting for {what} from the autoscaler ({missing} more worker(s) to place)"


def check_cluster(
    loop: LoopConfig,
    section: str,
    log: Callable[[str], None] = print,
    look: Callable[[], Cluster] = current_cluster,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    request: Callable[[list[dict[str, float]]], None] | None = None,
) -> None:
    """Return once the workers can be placed; fail in one line when they never can, or when the
    autoscaler has not provided the nodes within `<section>.placement_timeout_s`."""
    cluster = look()
    if verdict(cluster, loop, section) == "now":
        return
    request = request or _request_resources
    request([worker_resources(loop)] * loop.max_workers)  # start the nodes now, not when Ray Train asks
    deadline = clock() + loop.placement_timeout_s
    try:
        log(f"[{section}] {waiting_line(cluster, loop)}, up to {loop.placement_timeout_s} s")
        while verdict(cluster, loop, section) != "now":
            if clock() >= deadline:
                raise UserError(
                    f"config key '{section}.placement_timeout_s': the autoscaler did not provide "
                    f"{loop.min_workers} workers within {loop.placement_timeout_s} s ({cluster.describe()})"
                )
            sleep(POLL_S)
            cluster = look()
    finally:
        request([])  # a standing request would keep GPU nodes up after the run


def _request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler for these bundles at once (bypassing its upscaling speed); [] withdraws."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
