"""Counting dispatched aten operations."""

from __future__ import annotations

import torch

from plastibench.bench import measure, measure_loop
from plastibench.opcount import count_ops, op_counts

CPU = torch.device("cpu")


def test_counts_a_known_function_exactly():
    a, b = torch.ones(3), torch.ones(3)
    assert count_ops(lambda: torch.add(a, b).mul(2)) == 2
    assert op_counts(lambda: torch.add(a, b).mul(2)) == {"aten.add.Tensor": 1, "aten.mul.Tensor": 1}
    assert count_ops(lambda: None) == 0


def test_views_and_backward_are_counted():
    w = torch.ones(3, requires_grad=True)
    forward = op_counts(lambda: (w * 2).sum())
    assert forward == {"aten.mul.Tensor": 1, "aten.sum.default": 1}
    assert count_ops(lambda: w.view(3, 1)) == 1
    assert count_ops(lambda: (w * 2).sum().backward()) > 2


def test_engine_step_ops_do_not_grow_with_seeds_and_the_loop_ones_do():
    one, three = (measure("bp", "scr", "smoke", s, steps=5, warmup=2, device=CPU).ops_per_step for s in (1, 3))
    assert one == three > 0
    loop_one, loop_three = (measure_loop("bp", "scr", "smoke", s, steps=5, warmup=2, device=CPU).ops_per_step
                            for s in (1, 3))
    assert loop_three > loop_one > 0
    assert measure("cbp", "scr", "smoke", 2, steps=5, warmup=2, device=CPU).ops_per_step > 0
