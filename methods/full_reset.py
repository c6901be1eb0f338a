"""Full reset (``full-reset``): re-draw the whole network at every task boundary.

The "retrained network" baseline of Dohare et al., Nature 632:768-774 (2024), class-incremental
CIFAR-100 (``lop/incremental_cifar/cfg/retrained_network.json``, ``reset_network``): a network
trained from scratch on each task's data, against which the paper measures loss of plasticity.

Update rule: at the start of every task t ≥ 1 every parameter is re-drawn from the network's own
initialisation with fresh random numbers keyed by (seed, t) (the ResNet-18: conv weights
Kaiming-normal, fc N(0, 1/fan_in), biases 0, BatchNorm weight 1 and bias 0).

Deliberate choices, as the reference (``net.apply(kaiming_init_resnet_module)`` at each class
increase): BatchNorm running statistics are kept (``reset_bn_statistics`` resets them to mean 0,
variance 1), and the SGD momentum buffers are kept (``reset_optimizer_state`` zeroes them), so
the first steps after a reset still carry the previous task's momentum.
"""

from plastibench.method import Method
from plastibench.registry import register_method
from plastibench.reinit import check_redrawable, redraw, zero_optimizer_state


@register_method("full-reset")
class FullReset(Method):
    summary = "re-draw the whole network from its initialisation at every task boundary (retrained network)"
    paper = "Dohare et al., Nature 632:768-774 (2024), retrained-network baseline"
    claims = frozenset({"parameters"})
    needs_boundaries = True
    defaults = {"reset_optimizer_state": False, "reset_bn_statistics": False}
    bounds = {}  # no numeric hyperparameters

    def on_task_start(self, task_index):
        net = self.run.net
        if task_index == 0:  # the first task trains the initial network; check a redraw will fit
            check_redrawable(net, self.run.network_factory, self.run.seeds, [name for name, _ in net.named_parameters()], self.name)
            return
        names = [name for name, _ in net.named_parameters()]
        if self.hp["reset_bn_statistics"]:
            names += [name for name, _ in net.named_buffers()]
        changed = redraw(net, self.run.network_factory, self.run.seeds, task_index, names,
                         buffers=self.hp["reset_bn_statistics"])
        if self.hp["reset_optimizer_state"]:
            zero_optimizer_state(self.run.optimizer, changed)
