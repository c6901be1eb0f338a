"""``plastibench new-method NAME``: write a working method skeleton for a contributor to fill in.

The skeleton is backprop plus a harmless ``after_step`` (clip every parameter to ±100), so it
registers and passes the conformance suite as written; the contributor then replaces the TODOs
and the example hook by the method of the paper.
"""

from __future__ import annotations

import keyword
from pathlib import Path
from string import Template

from .errors import UsageError
from .registry import METHODS

TEMPLATE = Template('''\
"""$name: TODO one line saying what the method does.

TODO before opening a pull request: replace every paragraph below with this method's own text
(``plastibench show method $name`` prints this docstring).

Paper: TODO authors, "title", venue year; reference code: TODO repository and file.

Update rule (exact, per seed, in the order it runs within a step):

    θ ← θ − α·∇L(θ)          the protocol's optimizer step (SGD or Adam)
    θ ← clip(θ, −c, c)       after every step, c = ``weight_bound``   <- the example; replace it

Optimizer-state policy: TODO what happens to the optimizer's per-element state (momentum, Adam
moments) of the weights or units this method changes: kept, zeroed or re-initialised, and why.

Defaults: TODO every hyperparameter with its value and where the paper's configs set it; put
per-task values from the paper's own configs in ``task_defaults``.

Every tensor has a leading seed axis ``[S, ...]``: act on all seeds at once (masks and
``torch.where``), never loop over seeds in Python, never call ``.item()`` inside a step, and draw
random numbers with ``plastibench.rng`` (keyed by seed and step) so that resume and seed batching
stay exact.
"""

from __future__ import annotations

import torch

from plastibench.method import POSITIVE, Method, StepInfo
from plastibench.registry import register_method


@register_method("$name")
class $cls(Method):
    summary = "TODO one line for `plastibench list methods`"
    paper = "TODO authors, title, venue year"
    defaults = {"weight_bound": 100.0}  # TODO the paper's hyperparameters and their values
    task_defaults = {}  # TODO per-task values from the paper's configs, e.g. {"scr": {"weight_bound": 10.0}}
    # TODO the range of every int or float hyperparameter (a test refuses a method without them):
    # UNIT [0, 1], UNIT_OPEN [0, 1), POSITIVE > 0, NON_NEGATIVE >= 0, AT_LEAST_ONE >= 1, or
    # Range(low, high, low_open, high_open), all from plastibench.method. `--set` values outside
    # the range, NaN and inf are refused before the run starts.
    bounds = {"weight_bound": POSITIVE}
    claims = frozenset()  # what it owns exclusively, for compositions: see CONTRIBUTING.md

    # The hooks, in the order the engine calls them (plastibench/method.py). Override only those
    # the method needs; the ones left commented out keep plain backprop's behaviour.
    #
    # def configure_network(self, net):
    #     """Once: modify or replace the seed-batched net. Unit-level methods take
    #     ``net.unit_groups()`` (incoming/outgoing weights of each hidden unit; see methods/cbp.py)."""
    #     return net
    #
    # def optimizer_spec(self, spec):
    #     """Once: change the protocol's optimizer settings, e.g. ``with_weight_decay(spec, λ)``."""
    #     return spec
    #
    # def build_optimizer(self, params, spec):
    #     """Once: choose or wrap the optimizer (the default is the protocol's SGD or Adam)."""
    #     return make_optimizer(params, spec)  # from plastibench.method
    #
    # def on_task_start(self, task_index):
    #     """At every task boundary, before the task's first step."""
    #
    # def loss_term(self, out, features):
    #     """Every step: an extra per-seed loss ``[S]`` added to the task loss, or None."""
    #     return None

    @torch.no_grad()
    def after_step(self, info: StepInfo) -> None:
        """Every step, after ``optimizer.step()``: the example clips every parameter to ±weight_bound."""
        bound = self.hp["weight_bound"]
        for p in self.run.net.parameters():
            p.clamp_(-bound, bound)

    # State kept across steps (tensors with a seed axis) must go into the checkpoint:
    #
    # def state_dict(self):
    #     return {"utility": self.utility.clone()}
    #
    # def load_state_dict(self, state):
    #     self.utility.copy_(state["utility"])
''')


def class_name(name: str) -> str:
    """``my_method`` -> ``MyMethod``, never one of the names the skeleton imports."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_")) or "Plugin"
    return camel + "Method" if camel in {"Method", "StepInfo", "POSITIVE"} else camel


def check_name(name: str) -> None:
    """Refuse names that cannot be a module of ``plastibench.methods`` or are taken."""
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise UsageError(f"{name!r} is not a valid method name: use a Python identifier that does not "
                         "start with '_' and is not a keyword, e.g. my_method")
    if name in METHODS.names():
        raise UsageError(f"method {name!r} is already registered (by {METHODS.get(name).__module__}); "
                         "choose another name")


def render(name: str) -> str:
    return TEMPLATE.substitute(name=name, cls=class_name(name))


def write_method(name: str, directory: Path) -> Path:
    """Write ``directory/NAME.py`` from the template; refuse a taken name or an existing file."""
    check_name(name)
    if not directory.is_dir():
        raise UsageError(f"--dir {directory}: no such directory (run from the repository root, or pass "
                         "--dir pointing at its methods/ folder)")
    path = directory / f"{name}.py"
    if path.exists():
        raise UsageError(f"{path} already exists; edit it, or choose another name")
    path.write_text(render(name))
    return path
