"""L2 Init (``l2init``): L2 regularisation toward the initial parameters ("regenerative regularisation").

Kumar, Marklund & Van Roy, "Maintaining plasticity in continual learning via regenerative
regularization" (arXiv 2308.11958, CoLLAs 2025). A loss term, so it acts through whichever
optimizer the protocol uses (SGD, or Adam as the paper's main results).

Update rule, per seed, every step (θ every parameter of the network: all weights and biases, BN
affine parameters included; BN running statistics are buffers, not parameters):

    loss_term = (λ/2)·‖θ − θ₀‖²₂          so      ∇ = ∇L(θ) + λ·(θ − θ₀)
    with plain SGD:   θ ← θ − α·∇L(θ) − α·λ·(θ − θ₀)  =  (1 − αλ)·θ + αλ·θ₀ − α·∇L(θ)

θ₀ is the parameters at time step 0: a copy taken when the first task begins (after the task's own
``begin_task``), kept in the method's state, so checkpoints carry it and a resumed run regresses
toward the same θ₀. Where the task leaves the network as built (``scr``, ``pmnist``, ``icifar100``)
this is the initial draw; ``cimagenet`` zeroes its output layer before each task (the reference's
``new_heads``), so there the head's θ₀ is 0, the value it restarts from at every task.

Pinned conventions where sources disagree:

* **Squared** norm, as the paper's Eq. (§3: L_reg = L_train + λ‖θ − θ₀‖²₂). Plasticine
  (``plasticine/*_base.py::plasticine_regenerative_regularization``) uses the *unsquared* norm
  ``0.01·‖θ − θ₀‖₂``, a different regulariser (constant-magnitude pull); we do not follow it.
* **Factor λ/2**, i.e. the gradient is λ(θ − θ₀). The paper's §3 formula, read literally, has
  gradient 2λ(θ − θ₀), but its own Appendix A.3 states the SGD update as
  θ ← (1 − αλ)θ + αλθ₀ − α∇L (gradient λ(θ − θ₀)), and both public re-implementations agree with
  A.3: ``mohmdelsayed/weight-clipping`` ``core/optim/l2_init.py`` (SGD with ``weight_decay=λ`` plus
  αλθ₀) and ``isaac7778/FIRE`` ``vision/train.py`` (``coef/2 · Σ(θ − θ₀)²``). It also makes
  ``l2init`` with θ₀ = 0 identical to our ``l2`` (torch ``weight_decay=λ``) at the same λ, as the
  paper's tables compare L2 and L2 Init at equal λ.

Defaults (Kumar et al., Appendix A): λ = 1e-2, the value A.2.5 finds best across problems and the
tuned value on Permuted MNIST, Random-Label MNIST and Random-Label CIFAR with SGD and Adam
(Table 3); ``cimagenet`` λ = 1e-3, the tuned value on their Continual ImageNet with SGD (α = 0.1)
and Adam (Table 4); ``cifar5p1`` (their 5+1 CIFAR, run with Adam here) λ = 1e-2, the value they tune
there with Adam (1e-5 with SGD). ``scr``, ``pmnist`` and ``icifar100`` take the general 1e-2 (the
paper has no slowly-changing regression or CIFAR-100 class-incremental stream). ``warmstart``
λ = 1e-3, FIRE's setting on its warm-start ResNet-18 CIFAR-10 (``isaac7778/FIRE``
``vision/scripts/warm_start.sh``, ``--regen-coef 1e-3``, whose ``vision/train.py`` adds
``coef/2·Σ(θ − θ₀)²``, this rule; FIRE adds it in the second phase only, here it acts throughout).

Weight decay: L2 Init replaces L2 (the paper compares them as alternatives at equal λ), so
``optimizer_spec`` sets the protocol's coupled ``weight_decay`` to 0; on ``icifar100`` the
protocol's 5e-4 toward 0 would otherwise regularise a second time, toward another point.

Optimizer state: untouched (nothing is reset; the term only adds to the gradient).

Vectorizable (``plastibench.members``): λ (each member's term is scaled by its own λ/2).
"""

from __future__ import annotations

import torch

from plastibench.members import per_member
from plastibench.method import NON_NEGATIVE, Method, with_weight_decay
from plastibench.registry import register_method


@register_method("l2init")
class L2Init(Method):
    summary = "L2 regularisation toward the initial parameters: loss + (λ/2)·‖θ − θ₀‖² (L2 Init)"
    paper = ("Kumar, Marklund & Van Roy, Maintaining plasticity in continual learning via regenerative "
             "regularization, arXiv 2308.11958 (CoLLAs 2025)")
    defaults = {"lam": 1e-2}
    task_defaults = {"cimagenet": {"lam": 1e-3}, "cifar5p1": {"lam": 1e-2}, "warmstart": {"lam": 1e-3}}
    bounds = {"lam": NON_NEGATIVE}
    vectorizable = frozenset({"lam"})

    def optimizer_spec(self, spec):
        """No coupled weight decay: the term toward θ₀ is the regulariser (see the docstring)."""
        return with_weight_decay(spec, 0.0)

    def configure_network(self, net):
        self.params = [p for _, p in net.named_parameters()]
        self.theta0 = [p.detach().clone() for p in self.params]  # replaced when task 0 begins
        return net

    def on_task_start(self, task_index):
        if task_index == 0:
            self.theta0 = [p.detach().clone() for p in self.params]

    def loss_term(self, out, features):
        total = None
        for p, p0 in zip(self.params, self.theta0):
            term = (p - p0).square().flatten(1).sum(1)
            total = term if total is None else total + term
        return per_member(0.5 * self.hp["lam"], total) * total

    def state_dict(self):
        return {"theta0": [t.clone() for t in self.theta0]}

    def load_state_dict(self, state):
        with torch.no_grad():
            for t, saved in zip(self.theta0, state["theta0"], strict=True):
                t.copy_(saved)
