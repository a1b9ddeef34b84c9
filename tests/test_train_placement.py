"""The cluster check before training: against live nodes and the autoscaler's node types.

An autoscaling GPU cluster has no GPU node at submit time; the check must wait for the autoscaler
there (with a visible line and a timeout), and refuse at once only what no node type could host.
"""

from __future__ import annotations

import pytest

from pipelines.config import LoopConfig
from pipelines.errors import UserError
from pipelines.runtime.cluster import UNBOUNDED, Cluster, NodeGroup, current_cluster
from pipelines.training.placement import check_cluster, verdict

HEAD = {"CPU": 8.0, "memory": 32e9}  # the CPU head that runs the job drivers
GPU8 = {"CPU": 96.0, "GPU": 8.0, "memory": 1.1e12}  # an 8-GPU host (p4d.24xlarge)
RECIPE = {
    "num_workers": 8,
    "use_gpu": True,
    "cpus_per_worker": 8,
    "micro_batch_size": 16,
    "global_batch_size": 512,
}


def loop(**overrides) -> LoopConfig:
    return LoopConfig(**{**RECIPE, **overrides})


def autoscaling(max_count: int = 2, resources=GPU8) -> Cluster:
    return Cluster(live=[HEAD], groups=[NodeGroup("gpu", dict(resources), max_count)])


def refused_key(cluster: Cluster, cfg: LoopConfig) -> str:
    with pytest.raises(UserError) as info:
        verdict(cluster, cfg, "train")
    message = str(info.value)
    assert "\n" not in message and message.startswith("config key 'train.")
    return message.split("'")[1]


def test_a_gpu_group_scaled_to_zero_is_waited_for_not_refused():
    assert verdict(autoscaling(), loop(), "train") == "later"
    assert verdict(autoscaling(), loop(num_workers=16, global_batch_size=512), "train") == "later"
    assert (
        verdict(autoscaling(max_count=UNBOUNDED), loop(num_workers=64, global_batch_size=1024), "train")
        == "later"
    )


def test_live_gpu_nodes_place_the_workers_now():
    cluster = Cluster(live=[HEAD, GPU8], groups=[NodeGroup("gpu", dict(GPU8), 2)])
    assert verdict(cluster, loop(), "train") == "now"
    assert verdict(cluster, loop(num_workers=16, global_batch_size=512), "train") == "later"


def test_live_nodes_of_a_group_count_against_its_max_count():
    cluster = Cluster(live=[HEAD, GPU8, GPU8], groups=[NodeGroup("gpu", dict(GPU8), 2)])
    assert refused_key(cluster, loop(num_workers=24, global_batch_size=384)) == "train.num_workers"


def test_what_no_node_type_could_ever_host_is_refused_at_once():
    # the old `ray up` GPU node: 4 vCPUs cannot host a worker of 8 CPUs, however many there are
    assert refused_key(autoscaling(8, {"CPU": 4.0, "GPU": 1.0}), loop()) == "train.num_workers"
    # one-GPU pods, at most 8 of them: 2 x 8 GPUs is impossible
    assert refused_key(autoscaling(8, {"CPU": 8.0, "GPU": 1.0}), loop(num_workers=16)) == "train.num_workers"
    # no GPU anywhere, not even in a node type: the GPU switch is what is wrong
    assert (
        refused_key(Cluster(live=[HEAD], groups=[NodeGroup("cpu", dict(HEAD), 4)]), loop()) == "train.use_gpu"
    )
    assert refused_key(Cluster(live=[HEAD]), loop()) == "train.use_gpu"


class Autoscaler:
    """A cluster description that gains the GPU nodes after `boots` looks: what the check sees
    while the autoscaler starts them. Records the resource requests the check makes."""

    def __init__(self, boots: int | None):
        self.boots, self.looks, self.requests, self.now = boots, 0, [], 0.0

    def look(self) -> Cluster:
        self.looks += 1
        booted = self.boots is not None and self.looks > self.boots
        return Cluster(live=[HEAD, *([GPU8] if booted else [])], groups=[NodeGroup("gpu", dict(GPU8), 2)])

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


def run_check(scaler: Autoscaler, cfg: LoopConfig, lines: list[str]) -> None:
    check_cluster(cfg, "train", lines.append, scaler.look, scaler.sleep, scaler.clock, scaler.requests.append)


def test_the_check_asks_the_autoscaler_and_waits_with_a_visible_line():
    scaler, lines = Autoscaler(boots=3), []
    run_check(scaler, loop(), lines)
    assert scaler.looks == 4  # returned on the first look that could place the workers
    assert lines and all("waiting for 8 GPUs from the autoscaler" in line for line in lines)
    assert len(lines) == 1  # one line, not one a poll
    worker = {"CPU": 8.0, "GPU": 1.0}
    assert scaler.requests == [[worker] * 8, []]  # asked for the workers up front, then withdrew


def test_the_wait_ends_at_its_timeout_in_one_line_and_withdraws_the_request():
    scaler, lines = Autoscaler(boots=None), []
    with pytest.raises(UserError) as info:
        run_check(scaler, loop(placement_timeout_s=60), lines)
    assert "'train.placement_timeout_s'" in str(info.value) and "\n" not in str(info.value)
    assert 60 <= scaler.now < 70
    assert scaler.requests[-1] == []


def test_a_cluster_that_places_the_workers_asks_nothing():
    scaler, lines = Autoscaler(boots=0), []
    run_check(scaler, loop(), lines)
    assert lines == [] and scaler.requests == []


def test_the_live_cluster_description_holds_the_reported_node_types(reported_node_types):
    cluster = current_cluster()
    assert cluster.live and all("CPU" in node for node in cluster.live)
    assert cluster.groups == [NodeGroup("gpu-8x", {"CPU": 96.0, "GPU": 8.0, "memory": 1e12}, 2)]
    assert verdict(cluster, loop(), "train") == "later"


def test_a_local_cluster_reports_no_node_types(ray_local):
    assert current_cluster().groups == []
