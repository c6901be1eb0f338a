"""Dropout (``dropout``) on every hidden layer: the Nature paper's dropout baseline.

Srivastava et al., "Dropout: a simple way to prevent neural networks from overfitting", JMLR 15
(2014); a baseline of Dohare et al., Nature 632:768-774 (2024), which found that it does not
prevent loss of plasticity.

Rule (inverted dropout, as ``torch.nn.Dropout``): at every hidden nonlinearity ("site", one per
unit group) of a network in train mode,

    h ← h ⊙ m / (1 − p),   m_e ~ Bernoulli(1 − p) independently for every element e of h

(every example of the batch, every unit, every position of a conv map), and h ← h in eval mode
(``net.eval()``: tasks measure test accuracy and the diagnostics probe there, so nothing is
dropped then). m_e = 1 iff u_e ≥ p with u = ``rng.uniform(seed, step, "dropout/site<i>",
h.shape[1:])``, a pure function of (seed, global step, site, element): seed k alone draws what it
draws beside other seeds, and a resumed run draws what the uninterrupted one does (the step is the
run's device clock, ``run.clock.step``, which the engine sets from its checkpointed step counters
before each segment: the method keeps no state of its own). A second train-mode forward in the
same step reuses that step's masks.

Where: right after the activation, before any pooling, so on the ConvNet dropout acts on the
conv maps before each max-pool and on fc1/fc2; on the ResNet-18 after each of the 17 ReLUs,
i.e. inside the blocks and on the block outputs that also feed the skip paths. The dropped
values are what the next layer reads and what the net returns as ``features`` (so CBP or ReDo
composed with dropout see dropped activations in train mode). The output layer is not dropped.

Defaults: p = 0.1 (unverified). shibhansh/loss-of-plasticity has no dropout configuration or code
in any stored commit (all 59 commits of the snapshot searched), so p cannot be taken from the
reference configs; 0.1 is our choice and must be checked against the paper's Methods and
Extended Data Fig. 4b (dropout on Online Permuted MNIST, three p values plotted) before results
are reported as the paper's setting. No optimizer state is touched; nothing is reset.

Vectorizable (``plastibench.members``): p (each member keeps u ≥ p and scales by 1/(1 − p), its own).
"""

from __future__ import annotations

import torch

from plastibench import rng
from plastibench.members import is_zero, per_member
from plastibench.method import UNIT_OPEN, Method
from plastibench.registry import register_method


@register_method("dropout")
class Dropout(Method):
    claims = frozenset({"architecture"})
    summary = "inverted dropout after every hidden nonlinearity in train mode (the paper's dropout baseline)"
    paper = ("Srivastava et al., Dropout, JMLR 15:1929-1958 (2014); baseline of Dohare et al., "
             "Nature 632:768-774 (2024)")
    defaults = {"p": 0.1}
    bounds = {"p": UNIT_OPEN}  # p = 1 would drop everything and scale by 1/0
    vectorizable = frozenset({"p"})

    def configure_network(self, net):
        self.net = net
        self.blocks: dict[tuple[int, tuple[int, ...]], rng.Block] = {}
        net.set_post_activation(self._drop)
        return net

    def _drop(self, site: int, h: torch.Tensor) -> torch.Tensor:
        p = self.hp["p"]
        if not self.net.training or is_zero(p):
            return h
        shape = tuple(h.shape[1:])
        block = self.blocks.get((site, shape))
        if block is None:
            block = self.blocks[site, shape] = rng.Block(self.run.seeds, f"dropout/site{site}", shape)
        u = block.at(self.run.clock.step)
        keep = (u >= per_member(p, u)).to(h.dtype)
        return h * (keep * per_member(1.0 / (1.0 - p), keep))

