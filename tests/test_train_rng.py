"""A training rank saves and restores the RNG of its own CUDA device only.

Ray gives each GPU worker one visible device, but a rank restarted on another node, beside other
workers, may see another number of devices; restoring every saved device by index then fails. No
GPU here: `VisibleDevices` is torch.cuda as such a process sees it, holding real generator states.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from pipelines.training.checkpoint import rng_state, set_rng_state


class VisibleDevices:
    """torch.cuda's RNG calls for a process that sees `count` devices and runs on `current`."""

    def __init__(self, count: int, current: int):
        self.current = current
        self.states = [torch.Generator().manual_seed(100 + i).get_state() for i in range(count)]

    def is_available(self) -> bool:
        return True

    def current_device(self) -> int:
        return self.current

    def get_rng_state(self, device: int) -> torch.Tensor:
        return self.states[device].clone()

    def set_rng_state(self, state: torch.Tensor, device: int) -> None:
        self.states[device] = state.clone()  # IndexError for a device this process does not see

    def get_rng_state_all(self) -> list[torch.Tensor]:  # what restoring by index would need
        return [s.clone() for s in self.states]


def test_a_rank_moved_to_a_node_with_fewer_visible_devices_restores_its_own_generator():
    saved_on = VisibleDevices(count=8, current=5)  # rank 5 of a host where it saw all 8 GPUs
    state = json.loads(json.dumps(rng_state(cuda=saved_on)))  # as the checkpoint stores it
    restored_on = VisibleDevices(count=1, current=0)  # restarted where Ray shows it one GPU
    set_rng_state(state, cuda=restored_on)
    assert torch.equal(restored_on.states[0], saved_on.states[5])
    assert len(state["cuda"]) == saved_on.states[5].numel()  # one device's state, not eight


def test_the_cpu_generators_come_back_exactly():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = json.loads(json.dumps(rng_state()))
    expected = (torch.rand(4), np.random.rand(4), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(state)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1]) and random.random() == expected[2]
