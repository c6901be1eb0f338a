"""ReDo (``redo``): every F steps, recycle the τ-dormant hidden units.

Sokar, Agarwal, Castro & Evci, "The dormant neuron phenomenon in deep reinforcement learning",
ICML 2023. Restated from the official code (``google/dopamine``,
``dopamine/labs/redo/weight_recyclers.py``: ``NeuronRecycler``, ``estimate_neuron_score``,
``recycle_dead_neurons``); compared with ``lop/algos/gntRedo.py`` (Dohare et al.'s ReDo) and
``isaac7778/FIRE`` ``vision/interventions/node_reset/redo.py``.

Update rule. For every hidden layer l with units i (conv channels count as units), per seed:

    s_i = E|h_i| / ( (1/n_l)·Σ_j E|h_j| + 1e-9 )        (E over examples and, for conv maps, positions)
    unit i is τ-dormant when s_i ≤ τ.

After every F-th optimizer step (global steps F−1, 2F−1, ...; dopamine's ``update_step % F == 0``,
``update_step > 0``; in ``on_period``, which the engine calls between steps), each dormant unit
gets: incoming weights redrawn from the network's own initial distribution
(``plastibench.units.incoming_init``: Kaiming-uniform for the MLPs,
U(±√(1/fan_in)) for the ConvNet, Kaiming-normal for the ResNet), bias 0, outgoing weights 0, and
its BatchNorm/LayerNorm reset where it has one (weight 1, bias 0, running mean 0, variance 1). As
in dopamine, all layers' incoming weights are redrawn before any outgoing weights are zeroed, so a
weight joining two recycled units ends at 0. The output layer's units are never recycled.

h_i are the post-activation values of unit i as dopamine records them (``networks.py``: each
layer's output right after its ReLU; its Impala stacks pool before that ReLU, the paper's ConvNet
after it), for a conv layer here the unpooled map: E|h_i| is the mean over
the examples and the H·W positions of that map (``estimate_neuron_score`` reduces every axis but
the channels). Our ConvNet returns its conv features after 2x2 max pooling (CBP's reference
definition) and the ResNet-18 its last block's output average-pooled, so ReDo does not read the
returned features: it observes every site's output inside the forward
(``HiddenSites.set_site_observer``, ``plastibench/nn.py``), in train mode only, and reduces it to
E|h_i| ``[S, n]`` there. Pooling would change the scores (a 2x2 max raises the mean of a sparse,
peaked map more than a dense one's). What a site outputs is what the next layer (or its pool)
reads, so composed with ``dropout`` the dropped values.

E|h_i| (``score_on``): dopamine scores each check on one fresh batch (256 examples from the replay
buffer); FIRE's port on the last 512 examples seen; Dohare's ``GnTredo`` on a history of features.
Default "batch" (dopamine's rule): the F-th step's batch alone (``icifar100`` B = 90, ``cimagenet``
B = 100). "window" averages |h_i| over every example of the F steps since the last check (each
step's batch mean, averaged over the steps). Deliberate exception: ``scr`` and ``pmnist`` stream
one example a step, where a one-example score calls every unit silent on that example dormant
(about half of a ReLU layer), so their task default stays "window" (F = 1000 examples, the
closest we have to dopamine's 256-example batch).

Optimizer state (``reset_optimizer_state``, default true): the per-element state (SGD momentum,
Adam's m and v) of every tensor a recycled unit owns (incoming weights, bias, outgoing weights,
norm parameters) is zeroed; Adam's step count is kept. Dopamine zeroes m and v of the incoming
and outgoing weights only and leaves the bias's; we also zero the bias's, whose value is reset too
(as SNR's official code and FIRE's ReDo port do).

On the ResNet all 17 unit groups (``BatchedResNet18.unit_groups``, as ResGnT) are scored and
recycled; dopamine's Impala-ResNet variant recycles only some convs of each block.

Defaults: τ = 0.1 and F = 1000 steps. τ = 0.1 is what Dohare et al. ran
(``lop/rl/cfg/ant/redo.yml``: threshold 0.1, reset_period 100); F = 1000 is ``GnTredo``'s default
``reset_period`` (``lop/algos/gntRedo.py``, whose default threshold is 0.01). τ = 0.025
(``--set redo.threshold=0.025``) is the other value to run: issue 11 attributes it to the ReDo
paper's default replay-ratio setting, τ = 0.1 going with its high replay ratio; we could not read
the paper's hyperparameter table here to confirm that pairing, and dopamine's shipped gin files
(``dopamine/labs/redo/configs/*.gin``) set neither τ nor F (its ``BaseRecycler`` defaults are
τ = 0, F = 200 000). Other values in circulation: FIRE's scripts τ = 0.05 (ResNet-18) and 0.01
(ViT), checked every epoch; Kumar et al. sweep τ ∈ {0, 0.01, 0.1} with F of 1, 2 or 5 tasks
(project notes, not checked here).

RL (``sant``, ``ant``; ``lop/rl/cfg/ant/redo.yml``, ``lop/algos/gntRedo.py`` as ``ppo.py`` calls it):
τ = 0.1 and F = 100 updates, scored on the F-th update's mini-batch of each net (policy and value),
no optimizer-state reset (GnTredo touches none, and PPO's optimizer is torch's Adam), new incoming
weights U(±√(3/fan_in)) (the agent's lecun init). The reference's agent also has weight decay 1e-4
and Adam β = (0.99, 0.99): that is ``redo+l2``. Deliberate deviation: GnTredo replaces layer by
layer (a weight joining two recycled units of adjacent layers ends freshly drawn); we keep
dopamine's order above (it ends 0), the same for every task.

Vectorizable (``plastibench.members``): τ (each member compares with its own τ). The period F,
which places host events, is not.
"""

from __future__ import annotations

import torch

from plastibench.members import per_member
from plastibench.method import AT_LEAST_ONE, NON_NEGATIVE, Method, StepInfo
from plastibench.registry import register_method
from plastibench.units import UnitGroup, incoming_init, incoming_shape, per_unit

EPS = 1e-9  # dopamine's ``score /= jnp.mean(score) + 1e-9``


def mean_abs(h: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """E|h_i| over the batch and, for conv maps ``[S, B, n, H, W]``, the positions: ``[S, n]``."""
    return per_unit(h.detach(), group).abs().mean((1, 3))


def normalised_score(raw: torch.Tensor) -> torch.Tensor:
    """s_i = raw_i / (mean_j raw_j + 1e-9), per seed; ``raw[S, n]``."""
    return raw / (raw.mean(1, keepdim=True) + EPS)


@register_method("redo")
class ReDo(Method):
    claims = frozenset({"units"})
    summary = "ReDo: every F steps, reinitialise units whose normalised mean |activation| is <= tau"
    paper = ("Sokar, Agarwal, Castro & Evci, The dormant neuron phenomenon in deep reinforcement learning, "
             "ICML 2023")
    defaults = {"threshold": 0.1, "period": 1000, "score_on": "batch", "reset_optimizer_state": True}
    # one example a step: a one-example score would call every silent unit dormant (see the docstring)
    task_defaults = {"scr": {"score_on": "window"}, "pmnist": {"score_on": "window"},
                     **dict.fromkeys(("sant", "ant"), {"threshold": 0.1, "period": 100, "score_on": "batch",
                                                       "reset_optimizer_state": False})}
    choices = {"score_on": ("window", "batch")}
    # τ compares with a normalised score s_i ≥ 0 (mean 1; τ = 0 recycles only fully silent units)
    bounds = {"threshold": NON_NEGATIVE, "period": AT_LEAST_ONE}
    vectorizable = frozenset({"threshold"})

    def configure_network(self, net):
        self.net = net
        self.groups: list[UnitGroup] = net.unit_groups()
        self.rules = [incoming_init(net, g) for g in self.groups]
        s, dev = self.run.seeds.numel(), self.run.seeds.device
        # E|h_i| per unit, [S, n]: the last train-mode forward's ("batch") or summed over the period ("window")
        self.window = [torch.zeros(s, g.n_units, device=dev) for g in self.groups]
        net.set_site_observer(self.observe)
        return net

    @torch.no_grad()
    def observe(self, site: int, h: torch.Tensor) -> None:
        """A site's output in a forward (conv maps unpooled): record E|h_i| in train mode."""
        if not self.net.training:
            return
        raw = mean_abs(h, self.groups[site])
        if self.hp["score_on"] == "window":
            self.window[site].add_(raw)
        else:
            self.window[site].copy_(raw)

    def event_period(self) -> int:
        return self.hp["period"]

    @torch.no_grad()
    def on_period(self, info: StepInfo) -> None:
        """Between steps, after every F-th step: score, then recycle the dormant units. Periods are
        counted in global steps from 0, so a window always holds exactly F steps."""
        count = self.hp["period"] if self.hp["score_on"] == "window" else 1
        scores = [normalised_score(total / count) for total in self.window]
        dormant = [score <= per_member(self.hp["threshold"], score) for score in scores]
        self.recycle(dormant, info.step)
        for total in self.window:
            total.zero_()

    def recycle(self, dormant: list[torch.Tensor], step: int) -> None:
        """Reinitialise the units where ``dormant[l][S, n]``: every layer's incoming weights first,
        then every layer's outgoing weights zeroed (dopamine's order), then optimizer state."""
        seeds = self.run.seeds
        everyone = [torch.arange(g.n_units, device=seeds.device).expand(seeds.numel(), -1) for g in self.groups]
        for group, rule, idx, mask in zip(self.groups, self.rules, everyone, dormant):
            fresh = rule.draw(seeds, step, f"redo/{group.name}/init", (group.n_units, *incoming_shape(group)))
            group.reinitialise(idx, mask, fresh)
        for group, idx, mask in zip(self.groups, everyone, dormant):
            group.outgoing_weight.assign(idx, mask, 0.0)
            if self.hp["reset_optimizer_state"]:
                group.reset_optimizer_state(self.run.optimizer, idx, mask)

    def state_dict(self):
        return {"window": [t.clone() for t in self.window]}

    def load_state_dict(self, state):
        for mine, saved in zip(self.window, state["window"]):
            mine.copy_(saved)
