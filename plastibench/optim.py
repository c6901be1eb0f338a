"""Optimizers whose step is a pure function of device state (capturable on any device), and cheap.

:class:`DeviceSGD` is torch's SGD with its step written as a few fused (``_foreach``) operations
over all parameters, without the per-call bookkeeping of ``Optimizer.step``'s wrapper (profiler
records, grad-mode switches), which on a small net costs as much as the update. PyTorch's Adam keeps the step count on the host unless ``capturable=True``, which
PyTorch allows on CUDA only; :class:`DeviceAdam` is torch's Adam with the step count and the bias
corrections on the parameters' device, on every device, so that the CPU checks of the conformance
suite test the same step that a CUDA graph replays. :class:`AdamGnT` is the reference's Adam for
continual backprop, whose step counter is per element so that it can be reset per unit.

Per-member settings (:mod:`plastibench.members`): ``lr``, ``momentum``, ``weight_decay``, ``betas``
and ``eps`` may each be a per-member tensor ``[S]`` instead of a number; every parameter has the
leading member axis, so the member's value applies to its slice. A number runs the same operations
as ever (bit for bit). A tensor runs their per-member twins, which round alike on a CPU: ``add``'s
alpha becomes ``addcmul``'s factor, ``addcmul``'s and ``addcdiv``'s value a factor of their first
tensor, each cast to the parameter's dtype as the number would have been; derived numbers (1 − β,
lr/(1 − β1^t)) are computed in float64 first, as Python computed them.
"""

from __future__ import annotations

from typing import Any

import torch

from .members import is_zero, per_member, plus, plus_
from .protocol import OptimizerSpec


def _evaluate(closure) -> torch.Tensor | None:
    """The loss of an optimizer step's optional closure, evaluated with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _plus(xs: list[torch.Tensor], ys: list[torch.Tensor], a: Any, inplace: bool = False) -> list[torch.Tensor]:
    """``x + a·y`` for every pair (in place with ``inplace``); ``a`` a number or per-member tensor."""
    if torch.is_tensor(a):
        factors = [per_member(a, x) for x in xs]
        return torch._foreach_addcmul_(xs, ys, factors) if inplace else torch._foreach_addcmul(xs, ys, factors)
    return torch._foreach_add_(xs, ys, alpha=a) if inplace else torch._foreach_add(xs, ys, alpha=a)


def _addcmul_(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value: Any) -> torch.Tensor:
    """``x ← x + value·a·b``, ``value`` a number or a per-member tensor."""
    if torch.is_tensor(value):
        return x.addcmul_(a * per_member(value, x), b)
    return x.addcmul_(a, b, value=value)


def _has_tensor(value: Any) -> bool:
    return any(_has_tensor(v) for v in value) if isinstance(value, tuple) else torch.is_tensor(value)


def _placeholder(value: Any) -> Any:
    """``value`` with every tensor replaced by 0.0, for torch's constructors (which refuse ``[S]``)."""
    if isinstance(value, tuple):
        return tuple(_placeholder(v) for v in value)
    return 0.0 if torch.is_tensor(value) else value


def _owned(value: Any) -> Any:
    """A copy of every tensor in ``value`` (the optimizer's own, which a schedule may update in place)."""
    if isinstance(value, tuple):
        return tuple(_owned(v) for v in value)
    return value.clone() if torch.is_tensor(value) else value


def _in_place(current: Any, saved: Any) -> Any:
    """``saved`` copied into ``current``'s tensors (keeping their identity and device), else ``saved``."""
    if isinstance(current, tuple):
        return tuple(_in_place(c, s) for c, s in zip(current, saved, strict=True))
    return current.copy_(saved) if torch.is_tensor(current) else saved


class MemberSettings:
    """Mixin for optimizers whose group settings may be per-member tensors. ``_install`` puts
    ``settings`` (copies of their tensors) into the defaults and every group; ``load_state_dict``
    writes the saved settings into those tensors in place, so they stay on the parameters' device and
    a captured step, which reads them from memory, sees the loaded values."""

    def _install(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            if _has_tensor(value):
                self.defaults[key] = value
                for group in self.param_groups:
                    group[key] = _owned(value)

    def load_state_dict(self, state_dict):
        before = [dict(group) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for old, group in zip(before, self.param_groups):
            for key, value in old.items():
                if key != "params" and key in group:
                    group[key] = _in_place(value, group[key])


class DeviceSGD(MemberSettings, torch.optim.SGD):
    """SGD with coupled L2 ``weight_decay`` and heavy-ball ``momentum``, bit for bit torch's SGD
    (dampening 0, no Nesterov):

        g ← ∇ + λθ;  b ← g at the first step, then b ← μ·b + g;  θ ← θ − lr·(b if μ else g)

    ``state[p]["momentum_buffer"]`` is torch's, so state dicts and per-unit state resets carry over.
    A per-member μ or λ (some member's may be 0) takes the momentum and decay branches for all
    members; μ = 0 then gives b = g and λ = 0 adds 0, the same values as the skipped branch.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        settings = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, **{k: _placeholder(v) for k, v in settings.items()})
        self._install(settings)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            if not is_zero(wd):
                grads = _plus(grads, params, wd)
            if not is_zero(momentum):
                buffers = []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.clone(g).detach()
                        buffers.append(None)
                    else:
                        buffers.append(state["momentum_buffer"])
                old = [b for b in buffers if b is not None]
                if old:
                    torch._foreach_mul_(old, [per_member(momentum, b) for b in old]
                                        if torch.is_tensor(momentum) else momentum)
                    torch._foreach_add_(old, [g for g, b in zip(grads, buffers) if b is not None])
                grads = [self.state[p]["momentum_buffer"] for p in params]
            _plus(params, grads, -lr, inplace=True)
        return loss


def _with_grads(optimizer: torch.optim.Optimizer, like_param: tuple[str, ...], step_dtype=None):
    """(group, θ, state, g + λθ) for every θ with a gradient; a fresh state gets zeros shaped like θ
    under ``like_param`` and, with ``step_dtype``, a 0-dim device ``step`` of that dtype."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            if not state:
                if step_dtype is not None:
                    state["step"] = torch.zeros((), dtype=step_dtype, device=p.device)
                for key in like_param:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            wd = group["weight_decay"]
            yield group, p, state, (p.grad if is_zero(wd) else plus(p.grad, p, wd))


class DeviceAdam(MemberSettings, torch.optim.Adam):
    """Adam (Kingma & Ba 2015) with coupled L2 ``weight_decay``, as ``torch.optim.Adam``:

        g ← ∇ + λθ;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  t ← t + 1
        θ ← θ − lr/(1−β1^t) · m / (√v / √(1−β2^t) + ε)

    ``state[p]`` holds ``step`` (a float64 0-dim tensor on p's device), ``exp_avg`` and ``exp_avg_sq``,
    as torch's Adam does, so state dicts, checkpoints and per-unit state resets carry over. The bias
    corrections are computed in float64 on the device, as torch computes them in Python floats.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        settings = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, **{k: _placeholder(v) for k, v in settings.items()}, foreach=False)
        self._install(settings)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group, p, state, grad in _with_grads(self, ("exp_avg", "exp_avg_sq"), step_dtype=torch.float64):
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            m.lerp_(grad, per_member(1 - beta1, m))
            _addcmul_(v.mul_(per_member(beta2, v)), grad, grad, 1 - beta2)
            step_size = lr / (1 - torch.pow(beta1, step))
            correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
            denom = (v.sqrt() / per_member(correction2_sqrt, p)).add_(per_member(eps, p))
            p.sub_(m * per_member(step_size, p) / denom)
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch's Adam keeps a host-side step; ours lives on the device
            if "step" in state and "exp_avg" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float64).to(state["exp_avg"].device)


class AdamGnT(MemberSettings, torch.optim.Optimizer):
    """The Adam of continual backprop with Adam (``lop/utils/AdamGnT.py``, which ``lop/algos/cbp.py``
    and ``convCBP.py`` build for ``opt='adam'``), as its code executes. Per element, every step:

        g ← ∇ + λθ;  t ← t + 1;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
        θ ← θ − lr·(1−β2^t)·m / (√v + ε)

    Not Adam's bias correction: the reference computes √(1−β2^t)/(1−β1^t) and drops it
    (``bias_correction.sqrt().div_(...)`` is not in place), so m is not corrected and the step is
    scaled by 1−β2^t itself (0.3 % of Adam's first step at β = (0.9, 0.999)). The step count t
    is a tensor of θ's shape and dtype, so that ``lop/algos/gnt.py`` can zero it with m and v for
    a replaced unit's weights (:meth:`plastibench.units.UnitGroup.reset_optimizer_state` zeroes
    every state tensor of θ's shape). It is ``state["steps"]``, not the reference's ``"step"``:
    torch's ``load_state_dict`` leaves a ``"step"`` on the device it was saved from, but moves
    any other state to θ's device and dtype. The update runs as the reference's
    ``θ.addcdiv_(1−β2^t, (√v+ε)/m, value=−lr)`` (bit for bit), so an element with m = 0 stays.
    No AMSGrad (a reference option that nothing uses).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        settings = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, {k: _placeholder(v) for k, v in settings.items()})
        self._install(settings)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group, p, state, grad in _with_grads(self, ("steps", "exp_avg", "exp_avg_sq")):
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            step, m, v = state["steps"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            plus_(m.mul_(per_member(beta1, m)), grad, 1 - beta1)
            _addcmul_(v.mul_(per_member(beta2, v)), grad, grad, 1 - beta2)
            bias_correction = 1 - torch.pow(per_member(beta2, step), step)
            denom = v.sqrt().add_(per_member(eps, p)).div_(m)
            if torch.is_tensor(lr):  # addcdiv computes value·a / b: the factor goes on a
                p.addcdiv_(bias_correction * per_member(-lr, p), denom)
            else:
                p.addcdiv_(bias_correction, denom, value=-lr)
        return loss


def make_optimizer(params: list[torch.Tensor], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """:class:`DeviceSGD`, :class:`DeviceAdam` or :class:`AdamGnT` (``spec.name`` "adamgnt", which
    only ``cbp``'s ``optimizer`` asks for): all act element-wise, so seeds stay independent."""
    if spec.name == "sgd":
        return DeviceSGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return DeviceAdam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
    if spec.name == "adamgnt":
        return AdamGnT(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}; known: sgd, adam, adamgnt")
