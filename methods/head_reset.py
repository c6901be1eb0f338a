"""Head resetting (``head-reset``): re-draw the output layer at every task boundary.

The "head resetting" baseline of Dohare et al., Nature 632:768-774 (2024), class-incremental
CIFAR-100 (``lop/incremental_cifar/cfg/head_resetting.json``, ``reset_head``); resets as studied
by Nikishin et al., "The primacy bias in deep reinforcement learning", ICML 2022.

Update rule: at the start of every task t ≥ 1, the output layer's weight and bias are re-drawn from
the network's own initialisation (for the CIFAR ResNet-18 ``kaiming_init_resnet_module``: weight
~ N(0, 1/fan_in), bias 0; for the MLPs and the ConvNet their own init rules), with fresh random
numbers keyed by (seed, t). Everything else trains on as backprop.

Optimizer state: as the reference, the momentum buffers of the head are kept (the reference
re-initialises the module in place and never touches its SGD optimizer); ``reset_optimizer_state``
zeroes them. On ``cimagenet`` the task zeroes the head at every task start anyway (the reference's
``new_heads``); this method then replaces the zeros with a fresh draw.
"""

from plastibench.method import Method
from plastibench.registry import register_method
from plastibench.reinit import check_redrawable, head_names, redraw, zero_optimizer_state


@register_method("head-reset")
class HeadReset(Method):
    summary = "re-draw the output layer from its initialisation at every task boundary (the paper's baseline)"
    paper = "Dohare et al., Nature 632:768-774 (2024), head resetting; Nikishin et al., ICML 2022"
    defaults = {"reset_optimizer_state": False}
    needs_boundaries = True
    bounds = {}  # no numeric hyperparameters

    def on_task_start(self, task_index):
        net = self.run.net
        if task_index == 0:  # the first task trains the initial network; check a redraw will fit
            check_redrawable(net, self.run.network_factory, self.run.seeds, head_names(net), self.name)
            return
        changed = redraw(net, self.run.network_factory, self.run.seeds, task_index, head_names(net))
        if self.hp["reset_optimizer_state"]:
            zero_optimizer_state(self.run.optimizer, changed)
