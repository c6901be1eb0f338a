"""Members: grid points of one method trained as one batched model, alongside the seeds.

C configurations of a method that share a network shape run as one engine whose seed list is their
seed lists concatenated: member i is configuration ``i // n_seeds`` with seed ``seeds[i % n_seeds]``.
A hyperparameter that differs between the configurations becomes a per-member tensor ``[C·n_seeds]``;
only the method's ``vectorizable`` hyperparameters may (``Method.vectorizable``), anything else
(choices, periods, sizes) splits the grid into separate models.

A method reads such a value through :func:`per_member`, which leaves a Python number as it is, so the
single-configuration path runs exactly the operations it ran before. Rounding: where the scalar
path applies a Python float to a tensor, the operation converts it to the tensor's dtype (float32 for
the parameters), so a per-member tensor is cast to that dtype; a derived scalar (1 − η, lr·λ) is
computed in float64 from the float64 member tensor, as Python computed it, and only then cast.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import torch


def member_hparams(configs: Sequence[Mapping[str, Any]], n_seeds: int, vectorizable: Collection[str],
                   device) -> dict[str, Any]:
    """One hparams dict for C configurations (same keys) × ``n_seeds`` seeds each.

    A key whose values are all equal keeps its value; a key in ``vectorizable`` whose values differ
    becomes a float64 tensor (int64 when every value is an int) ``[C·n_seeds]`` on ``device``, each
    configuration's value repeated for its seeds; any other differing key is a ``ValueError``.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("member_hparams needs at least one configuration")
    keys = set(configs[0])
    for config in configs[1:]:
        if set(config) != keys:
            raise ValueError(f"configurations of one batched model must have the same hyperparameters; "
                             f"{sorted(keys ^ set(config))} differ")
    out: dict[str, Any] = {}
    for key, first in configs[0].items():
        values = [config[key] for config in configs]
        if all(type(v) is type(first) and v == first for v in values):
            out[key] = first
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if key not in vectorizable or not numeric:
            raise ValueError(f"{key} cannot vary within one batched model (values {values}); "
                             "run these configurations as separate models")
        dtype = torch.int64 if all(isinstance(v, int) for v in values) else torch.float64
        out[key] = torch.tensor(values, dtype=dtype, device=device).repeat_interleave(n_seeds)
    return out


def per_member(value: Any, like: torch.Tensor) -> Any:
    """``value`` ready to combine with ``like`` (leading member axis): a Python number unchanged; a
    0-dim tensor cast to ``like``'s dtype; a per-member tensor ``[M]`` cast and viewed
    ``[M, 1, ..., 1]``. Cast what the scalar path would have applied in ``like``'s dtype."""
    if not torch.is_tensor(value):
        return value
    value = value.to(like.dtype)
    return value if value.dim() == 0 else value.view(-1, *([1] * (like.dim() - 1)))


def plus(x: torch.Tensor, y: torch.Tensor, alpha: Any) -> torch.Tensor:
    """``x + alpha·y``: ``add``'s alpha for a number; ``addcmul`` with the per-member factor for a
    tensor, which rounds as ``add``'s alpha does."""
    if torch.is_tensor(alpha):
        return torch.addcmul(x, y, per_member(alpha, x))
    return x.add(y, alpha=alpha)


def plus_(x: torch.Tensor, y: torch.Tensor, alpha: Any) -> torch.Tensor:
    """:func:`plus` in place."""
    if torch.is_tensor(alpha):
        return x.addcmul_(y, per_member(alpha, x))
    return x.add_(y, alpha=alpha)


def host_values(value: Any) -> list:
    """A hyperparameter's per-member values as host numbers (``[value]`` for a Python number); a
    tensor is read back from the device, so only between steps."""
    return value.tolist() if torch.is_tensor(value) else [value]


def is_zero(value: Any) -> bool:
    """True for a Python 0; a per-member tensor holds differing values, so it is never all zero."""
    return not torch.is_tensor(value) and value == 0


def check_members(hp: Mapping[str, Any], vectorizable: Collection[str], n_members: int) -> None:
    """Refuse a tensor value for a key that is not vectorizable or that is not ``[n_members]``."""
    for key, value in hp.items():
        if not torch.is_tensor(value):
            continue
        if key not in vectorizable:
            raise ValueError(f"{key} cannot vary within one batched model (this method's vectorizable "
                             f"hyperparameters: {', '.join(sorted(vectorizable)) or 'none'})")
        if tuple(value.shape) != (n_members,):
            raise ValueError(f"{key}: a per-member value must have shape [{n_members}], got {list(value.shape)}")
