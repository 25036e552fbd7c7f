"""Dead ReLU units: which Linear/Conv outputs feed a ReLU-family activation, and which of them never activated.

Pure functions over modules and tensors, no Trainer. The callback hooks the activations found by
:func:`relu_after_layers` during the first epoch, adds each output's per-unit sums into one preallocated buffer
with :func:`fold_positive` (on the device: no host synchronisation), and judges the buffer once, at the end of the
epoch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from epochkit.init_audit.symmetry import LAYER_TYPES

#: The activations whose zero output means "inactive": their gradient there is zero too.
RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
#: Per-batch sums an :class:`PositiveSums` keeps on the device before folding them into its total.
RING_ROWS = 16
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


def fold_positive(total: torch.Tensor, output: torch.Tensor, channels_first: bool) -> bool:
    """Adds to ``total`` (one float64 entry per unit, in place, on its own device) each unit's sum of ``output``
    over samples and positions, NaN left out; False, adding nothing, for an output whose unit count differs from
    ``total``'s (an activation module reused on outputs of another width cannot be judged).

    A ReLU-family output is zero, positive or NaN, so a unit's total is positive exactly when the unit was positive
    for some sample and position (a sum of non-negative numbers is at least their largest, and float64 holds every
    value of a lower precision): two operations per call, no host synchronisation.

    Example:
        >>> total = torch.zeros(3, dtype=torch.float64)
        >>> fold_positive(total, torch.tensor([[0.0, 1.0, float("nan")], [0.0, 0.0, 0.0]]), channels_first=False)
        True
        >>> (total > 0).tolist()
        [False, True, False]
    """
    # Reductions of a detached tensor record no graph: no no_grad context needed (it costs more than the work,
    # once per batch and activation).
    ndim = output.ndim
    units_dim = 1 if channels_first and ndim > 1 else ndim - 1
    if ndim == 0 or output.shape[units_dim] != total.shape[0]:
        return False
    values = output.detach()
    if not values.is_floating_point():  # an integer output: count its positive values
        values = (values > 0).to(total.dtype)
    if ndim == 1:  # one sample of units
        values, ndim, units_dim = values.unsqueeze(0), 2, 1
    summed = torch.nansum(values, _other_dims(ndim, units_dim))
    total.add_(summed if summed.device == total.device else summed.to(total.device))
    return True


@functools.lru_cache(maxsize=64)
def _other_dims(ndim: int, units_dim: int) -> tuple[int, ...]:
    """Every dimension of an ``ndim``-dimensional output but its units'."""
    return tuple(d for d in range(ndim) if d != units_dim)


class PositiveSums:
    """One activation's per-unit sums over the first epoch (:func:`fold_positive`), one device operation per batch.

    Each output is summed straight into the next row of a small ring of :data:`RING_ROWS` rows, in the output's
    dtype, on its device (allocated at the first output: nothing allocated per batch); the ring is folded into the
    float64 ``total`` when it wraps and by :meth:`flush`. Only positivity is read, and a sum of non-negative
    numbers is positive exactly when one of them is, in any precision, so the rows that a wrap leaves behind and
    later flushes add again change nothing. An output of another dtype or device than the first goes through
    :func:`fold_positive` directly.

    Args:
        total: The float64 (float32 on MPS) per-unit totals, added to in place.
        channels_first: Whether the units are on dimension 1 (a convolution) rather than the last one.

    Example:
        >>> sums = PositiveSums(torch.zeros(3, dtype=torch.float64), channels_first=False)
        >>> sums.add(torch.tensor([[0.0, 2.0, 0.0]])), sums.add(torch.zeros(1, 4))
        (True, False)
        >>> (sums.flush() > 0).tolist()
        [False, True, False]
    """

    def __init__(self, total: torch.Tensor, channels_first: bool) -> None:
        self.total = total
        self.channels_first = channels_first
        self._ring: torch.Tensor | None = None
        self._rows: list[torch.Tensor] = []
        self._next = 0
        self._ndim = -1
        self._dims: tuple[int, ...] = ()
        self._units_dim = 0

    def add(self, output: torch.Tensor) -> bool:
        """Adds ``output``'s per-unit sums; False (nothing added) when its unit count is not the total's."""
        ring = self._ring
        if (
            ring is None
            or output.ndim != self._ndim
            or output.dtype != ring.dtype
            or output.device != ring.device
            or output.shape[self._units_dim] != ring.shape[1]
        ):
            return self._add_first_or_other(output)
        torch.nansum(output.detach(), self._dims, out=self._rows[self._next])
        self._next += 1
        if self._next == len(self._rows):
            self._next = 0
            self.flush()
        return True

    def _add_first_or_other(self, output: torch.Tensor) -> bool:
        if self._ring is None and output.ndim > 1 and output.is_floating_point():
            units_dim = 1 if self.channels_first else output.ndim - 1
            if output.shape[units_dim] == self.total.shape[0]:  # the ring, made once, then one operation a batch
                self._ndim, self._units_dim = output.ndim, units_dim
                self._dims = _other_dims(output.ndim, units_dim)
                self._ring = torch.zeros(RING_ROWS, self.total.shape[0], dtype=output.dtype, device=output.device)
                self._rows = list(self._ring.unbind(0))
                return self.add(output)
        return fold_positive(self.total, output, self.channels_first)

    def flush(self) -> torch.Tensor:
        """The totals, with the ring folded in."""
        if self._ring is not None:  # its rows stay: added again by a later flush, they change no unit's positivity
            summed = self._ring.sum(dim=0)
            self.total.add_(summed if summed.device == self.total.device else summed.to(self.total.device))
        return self.total
