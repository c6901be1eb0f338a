"""FIRE (``fire``): at every task boundary, replace each weight matrix by its nearest orthogonal matrix.

Han, Park, Oh, Kim, Lee & Kim, "FIRE: Frobenius-Isometry Reinitialization for Balancing the
Stability-Plasticity Tradeoff", ICLR 2026 (arXiv:2602.08040). Restated from the official code (``isaac7778/FIRE``,
``vision/interventions/fire.py::fire`` and ``newton_schulz``, called from ``vision/train.py``).

Update rule, in ``on_task_start(t)`` for every t > 0 (the official ``if i_iter > 0``, before the
chunk's first step), for every weight layer of the network (every linear and conv weight, the
output head and the ResNet's 1x1 downsample convs included; biases and BatchNorm untouched), per
seed. A linear weight W ``[d_out, d_in]``:

    X₀ = M / ‖M‖_F,  M = W if d_out ≥ d_in else Wᵀ          (X is tall: rows ≥ columns)
    X_{k+1} = 1.5·X_k − 0.5·X_k (X_kᵀ X_k),   k = 0 … N−1     (cubic Newton–Schulz, N = 10)
    W ← √(d_out/d_in) · (X_N if d_out ≥ d_in else X_Nᵀ)

A conv weight ``[d_out, d_in, kh, kw]`` is treated slice by slice: each W[:, :, i, j] ``[d_out, d_in]``
goes through the same iteration and is scaled by √(d_out/d_in) / (kh·kw) (the official
``kernel_size`` is kh·kw, the number of kernel positions, not the side length).

Newton–Schulz drives every singular value of X₀ towards 1 (σ ← 1.5σ − 0.5σ³), so with enough
iterations W Wᵀ = (d_out/d_in)·I when d_out ≤ d_in and WᵀW = (d_out/d_in)·I when d_out ≥ d_in (for a
conv slice, divided by (kh·kw)²): the polar factor U Vᵀ of W = U Σ Vᵀ, scaled. The official 10
iterations from the Frobenius normalisation bring a singular value of ‖W‖_F/20 to 0.9995 but one of
‖W‖_F/60 only to 0.77 and one of ‖W‖_F/100 to 0.53 (square layers have such small ones), so the
result is near-orthogonal, not exactly; we keep the official count (``iterations``) rather than
iterate to convergence.

Deliberate choices:

* A zero matrix (Continual ImageNet zeroes the head at the start of every task, just before this
  hook) stays zero; the official ``X / X.norm()`` would give NaN.
* Optimizer state (``optimizer_state``): the official training loop builds a fresh optimizer at the
  start of every chunk (``optimizer = get_optimizer(model, cfg)``, for every method), so momentum
  and Adam moments (and Adam's step count) start from zero after FIRE. Default "all" does the same:
  the whole optimizer state is dropped at each boundary where FIRE acts. "weights" zeroes only the
  per-element state of the orthogonalised weights; "none" keeps everything.
* Vision transformers (``is_vit``: only the q and k projections) do not occur in this benchmark.

Defaults: ``iterations`` = 10 (``vision/config.py``: ``'fire': {'iter_num': 10}``, used by every
script in ``vision/scripts``). FIRE draws no random numbers.
"""

from __future__ import annotations

import math

import torch

from plastibench.method import AT_LEAST_ONE, Method
from plastibench.nn import BatchedLinear
from plastibench.registry import register_method
from plastibench.vision import BatchedConv2d


def newton_schulz(w: torch.Tensor, iterations: int) -> torch.Tensor:
    """The cubic Newton–Schulz iterate of every matrix in ``w[..., d_out, d_in]``, as the official
    ``newton_schulz`` (Frobenius-normalised start, transposed to tall and back); zero stays zero."""
    tall = w.shape[-2] >= w.shape[-1]
    x = w if tall else w.transpose(-2, -1)
    norm = torch.linalg.matrix_norm(x, keepdim=True)
    x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    for _ in range(iterations):
        x = 1.5 * x - 0.5 * x @ (x.transpose(-2, -1) @ x)
    return x if tall else x.transpose(-2, -1)


@torch.no_grad()
def fire_(weight: torch.Tensor, iterations: int) -> None:
    """FIRE in place on one seed-batched weight: linear ``[S, out, in]`` or conv ``[S, out, in, kh, kw]``."""
    d_out, d_in = weight.shape[1], weight.shape[2]
    if weight.dim() == 3:
        weight.copy_(newton_schulz(weight, iterations).mul_(math.sqrt(d_out / d_in)))
        return
    kh, kw = weight.shape[3], weight.shape[4]
    slices = weight.permute(0, 3, 4, 1, 2)  # [S, kh, kw, out, in]: one matrix per kernel position
    ortho = newton_schulz(slices, iterations).mul_(math.sqrt(d_out / d_in) / (kh * kw))
    weight.copy_(ortho.permute(0, 3, 4, 1, 2))


@register_method("fire")
class Fire(Method):
    claims = frozenset({"parameters"})
    needs_boundaries = True
    summary = "FIRE: at each task boundary, orthogonalise every weight (10 Newton-Schulz steps, scaled)"
    paper = ("Han et al., FIRE: Frobenius-Isometry Reinitialization for Balancing the Stability-Plasticity "
             "Tradeoff, ICLR 2026 (arXiv:2602.08040)")
    defaults = {"iterations": 10, "optimizer_state": "all"}
    choices = {"optimizer_state": ("all", "weights", "none")}
    bounds = {"iterations": AT_LEAST_ONE}  # 0 would only rescale W to √(d_out/d_in)·W/‖W‖_F

    def configure_network(self, net):
        self.weights = [m.weight for m in net.modules() if isinstance(m, (BatchedLinear, BatchedConv2d))]
        return net

    @torch.no_grad()
    def on_task_start(self, task_index: int) -> None:
        if task_index == 0:
            return
        for weight in self.weights:
            fire_(weight, self.hp["iterations"])
        optimizer, policy = self.run.optimizer, self.hp["optimizer_state"]
        if policy == "all":
            optimizer.state.clear()
        elif policy == "weights":
            for weight in self.weights:
                for value in optimizer.state.get(weight, {}).values():
                    if torch.is_tensor(value) and value.shape == weight.shape:
                        value.zero_()
