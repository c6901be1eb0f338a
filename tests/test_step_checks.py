"""The capture checks catch each way a step can break a CUDA graph (and pass a clean one)."""

import tempfile

import pytest
import torch

from plastibench.checks import check_step
from plastibench.engine import Engine
from plastibench.method import Method
from plastibench.registry import TASKS


def _problems(method_cls) -> list[str]:
    task = TASKS.get("scr")
    engine = Engine(method_cls, {}, task, task.protocol("smoke"), [0, 1], device=torch.device("cpu"),
                    directory=tempfile.mkdtemp(), config={})
    return check_step(engine, 6)


class Clean(Method):
    def configure_network(self, net):
        self.total = torch.zeros(self.run.seeds.numel(), device=self.run.seeds.device)
        return net

    def after_step(self, info):
        self.total.add_(info.features[0].mean((1, 2)))  # in place, on the device


class Item(Clean):
    def after_step(self, info):
        if self.total.sum().item() > 1e9:  # a host sync
            pass


class Counter(Clean):
    def after_step(self, info):
        self.steps = getattr(self, "steps", 0) + 1  # a host value changing every step
        self.total.mul_(0.5 ** self.steps)


class NoDevice(Clean):
    def after_step(self, info):
        self.total.add_(torch.ones(self.total.shape[0]).to(self.total.device))  # created on the default device


class Rebinds(Clean):
    def after_step(self, info):
        self.total = self.total + 1  # rebinding: a replayed graph keeps the old tensor


class NonZero(Clean):
    def after_step(self, info):
        self.total.index_fill_(0, (self.total > 1e9).nonzero().flatten(), 0.0)


class ToHost(Clean):
    def after_step(self, info):
        self.total.add_(float(self.total.cpu().numpy()[0]) * 0)


def test_a_clean_method_passes():
    assert _problems(Clean) == []


@pytest.mark.parametrize("cls, expected", [
    (Item, "host synchronisation: aten._local_scalar_dense"),
    (NonZero, "host synchronisation: aten.nonzero"),
    (ToHost, "host transfer: Tensor.cpu()"),
    (Counter, "host state changed inside a step: .method.steps"),
    (NoDevice, "tensor created without device="),
    (Rebinds, "host state changed inside a step: .method.total"),
])
def test_each_capture_hazard_is_reported(cls, expected):
    problems = _problems(cls)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_changing_scalar_argument_is_graph_instability():
    class Schedule(Clean):
        def after_step(self, info):
            self.total.mul_(1.0 / (2 + len(self.run.protocol.name) * 0))  # constant: stable
            self.total.add_(info.features[0].sum() * 0 + _state["k"])
            _state["k"] += 1  # a host value outside the method, baked into each step's trace

    _state = {"k": 0}
    problems = _problems(Schedule)
    assert any(p.startswith("graph instability") for p in problems), problems
