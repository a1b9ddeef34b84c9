"""What the Ray cluster has and could have: its live nodes and the node types its autoscaler may
start, and how many workers of a given size they place. Pure arithmetic over a Cluster
description (current_cluster() reads the live one), shared by training's placement check and
generation's: a test can describe any cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

UNBOUNDED = -1  # max_count of a node group the autoscaler may grow without limit


@dataclass(frozen=True)
class NodeGroup:
    """A node type the autoscaler may start: what one node provides, and how many there may be."""

    name: str
    resources: dict[str, float]
    max_count: int  # UNBOUNDED, or the most nodes of this type (live ones included)


@dataclass
class Cluster:
    live: list[dict[str, float]]  # each live node's total resources
    groups: list[NodeGroup] = field(default_factory=list)  # empty: a fixed cluster, no autoscaler

    def describe(self) -> str:
        cpus = sum(n.get("CPU", 0.0) for n in self.live)
        gpus = sum(n.get("GPU", 0.0) for n in self.live)
        line = f"{cpus:g} CPUs, {gpus:g} GPUs on {len(self.live)} node(s)"
        if self.groups:
            kinds = ", ".join(
                f"{g.name} x{'any' if g.max_count == UNBOUNDED else g.max_count}" for g in self.groups
            )
            line += f"; the autoscaler may add {kinds}"
        return line


def per_node(resources: dict[str, float], need: dict[str, float]) -> int:
    """How many workers needing `need` fit on one node that has `resources`."""
    return int(min(math.floor(resources.get(r, 0.0) / amount) for r, amount in need.items()))


def _same_shape(node: dict[str, float], group: NodeGroup) -> bool:
    return all(node.get(r, 0.0) == group.resources.get(r, 0.0) for r in ("CPU", "GPU"))


def placeable_now(cluster: Cluster, need: dict[str, float]) -> int:
    return sum(per_node(node, need) for node in cluster.live)


def placeable_ever(cluster: Cluster, need: dict[str, float]) -> float:
    """Workers the cluster could place at its largest: the live nodes, plus for each node group the
    nodes it may still start (its max_count less its live nodes, matched by shape)."""
    total: float = placeable_now(cluster, need)
    for group in cluster.groups:
        fit = per_node(group.resources, need)
        if fit == 0:
            continue
        if group.max_count == UNBOUNDED:
            return math.inf
        running = sum(1 for node in cluster.live if _same_shape(node, group))
        total += max(0, group.max_count - running) * fit
    return total


def current_cluster() -> Cluster:
    """The live nodes and the autoscaler's node types (none reported: a fixed cluster)."""
    import ray

    from pipelines.runtime.ray import autoscaler_node_groups

    live = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return Cluster(live, [NodeGroup(*group) for group in autoscaler_node_groups()])
