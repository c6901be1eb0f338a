"""Optimizers whose step is a pure function of device state (capturable on any device), and cheap.

:class:`DeviceSGD` is torch's SGD with its step written as a few fused (``_foreach``) operations
over all parameters, without the per-call bookkeeping of ``Optimizer.step``'s wrapper (profiler
records, grad-mode switches), which on a small net costs as much as the update. PyTorch's Adam keeps the step count on the host unless ``capturable=True``, which
PyTorch allows on CUDA only; :class:`DeviceAdam` is torch's Adam with the step count and the bias
corrections on the parameters' device, on every device, so that the CPU checks of the conformance
suite test the same step that a CUDA graph replays. :class:`AdamGnT` is the reference's Adam for
continual backprop, whose step counter is per element so that it can be reset per unit.
"""

from __future__ import annotations

import torch

from .protocol import OptimizerSpec


def _evaluate(closure) -> torch.Tensor | None:
    """The loss of an optimizer step's optional closure, evaluated with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class DeviceSGD(torch.optim.SGD):
    """SGD with coupled L2 ``weight_decay`` and heavy-ball ``momentum``, bit for bit torch's SGD
    (dampening 0, no Nesterov):

        g ← ∇ + λθ;  b ← g at the first step, then b ← μ·b + g;  θ ← θ − lr·(b if μ else g)

    ``state[p]["momentum_buffer"]`` is torch's, so state dicts and per-unit state resets carry over.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if momentum != 0:
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
                    torch._foreach_mul_(old, momentum)
                    torch._foreach_add_(old, [g for g, b in zip(grads, buffers) if b is not None])
                grads = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_add_(params, grads, alpha=-lr)
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
            yield group, p, state, (p.grad if wd == 0 else p.grad.add(p, alpha=wd))


class DeviceAdam(torch.optim.Adam):
    """Adam (Kingma & Ba 2015) with coupled L2 ``weight_decay``, as ``torch.optim.Adam``:

        g ← ∇ + λθ;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  t ← t + 1
        θ ← θ − lr/(1−β1^t) · m / (√v / √(1−β2^t) + ε)

    ``state[p]`` holds ``step`` (a float64 0-dim tensor on p's device), ``exp_avg`` and ``exp_avg_sq``,
    as torch's Adam does, so state dicts, checkpoints and per-unit state resets carry over. The bias
    corrections are computed in float64 on the device, as torch computes them in Python floats.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group, p, state, grad in _with_grads(self, ("exp_avg", "exp_avg_sq"), step_dtype=torch.float64):
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - torch.pow(beta1, step))
            correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
            denom = (v.sqrt() / correction2_sqrt.to(p.dtype)).add_(eps)
            p.sub_(m * step_size.to(p.dtype) / denom)
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch's Adam keeps a host-side step; ours lives on the device
            if "step" in state and "exp_avg" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float64).to(state["exp_avg"].device)


class AdamGnT(torch.optim.Optimizer):
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
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group, p, state, grad in _with_grads(self, ("steps", "exp_avg", "exp_avg_sq")):
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            step, m, v = state["steps"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            p.addcdiv_(1 - torch.pow(beta2, step), v.sqrt().add_(eps).div_(m), value=-lr)
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
