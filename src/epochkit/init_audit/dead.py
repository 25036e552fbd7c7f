"""Dead ReLU units: which Linear/Conv outputs feed a ReLU-family activation, and which of them never activated.

Pure functions over modules and tensors, no Trainer. The callback hooks the activations found by
:func:`relu_after_layers` during the first epoch, folds each output into an ``alive`` mask with :func:`fold_alive`
(on the device: no host synchronisation), and judges the masks once, at the end of the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from epochkit.init_audit.symmetry import LAYER_TYPES

#: The activations whose zero output means "inactive": their gradient there is zero too.
RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
#: What may sit between the layer and its activation without changing which unit is which.
_PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.Dropout,
    nn.Identity,
)


@dataclass(frozen=True)
class Activation:
    """A ReLU-family activation that follows a Linear or Conv layer.

    Attributes:
        layer: The layer's module path (``net.0``).
        activation: The activation's module path (``net.1``).
        channels_first: Whether the units are on dimension 1 (a convolution) rather than the last one (a Linear).
    """

    layer: str
    activation: str
    channels_first: bool


def relu_after_layers(module: nn.Module) -> list[Activation]:
    """Every ReLU-family activation module registered right after a Linear or Conv layer among its parent's
    children (normalisation and dropout in between allowed), as in ``nn.Sequential`` stacks and ``conv, bn, relu``
    blocks. Functional activations (``F.relu``) leave no module to hook and are not seen.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2),
        ...                     nn.ReLU())
        >>> relu_after_layers(net)  # doctest: +NORMALIZE_WHITESPACE
        [Activation(layer='0', activation='2', channels_first=True),
         Activation(layer='4', activation='5', channels_first=False)]
    """
    found: list[Activation] = []
    seen: set[int] = set()
    for parent_path, parent in module.named_modules():
        previous: tuple[str, nn.Module] | None = None
        for name, child in parent.named_children():
            path = f"{parent_path}.{name}" if parent_path else name
            if isinstance(child, LAYER_TYPES) and not isinstance(child, nn.Embedding):
                previous = (path, child)
            elif isinstance(child, RELU_TYPES) and previous is not None and id(child) not in seen:
                seen.add(id(child))
                found.append(Activation(previous[0], path, not isinstance(previous[1], nn.Linear)))
                previous = None
            elif not isinstance(child, _PASS_THROUGH):
                previous = None
    return found


def fold_alive(alive: torch.Tensor | None, output: torch.Tensor, channels_first: bool) -> torch.Tensor | None:
    """``alive`` or'ed with the units of ``output`` that are positive for some sample and position, on the
    output's device; ``None`` for an output whose unit count differs from ``alive``'s (an activation module
    reused on outputs of another width cannot be judged).

    Example:
        >>> out = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> fold_alive(None, out, channels_first=False).tolist()
        [False, True, False]
    """
    # Comparisons and reductions of a detached tensor record no graph: no no_grad context needed (it costs more
    # than the work, once per batch and activation).
    units_dim = 1 if channels_first and output.ndim > 1 else output.ndim - 1
    positive = output.detach() > 0
    if positive.ndim > 1:
        positive = positive.movedim(units_dim, 0).reshape(positive.shape[units_dim], -1).any(dim=1)
    if alive is None:
        return positive
    if alive.shape != positive.shape:
        return None
    return alive | positive.to(alive.device)
