"""A host-memory copy of a module's best weights, made with preallocated buffers reused across improvements (the
copying itself is :mod:`epochkit._weights`, shared with :class:`~epochkit.cv.WeightReset`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch import Tensor, nn

from epochkit._weights import copy_tensors, distinct, empty_like_on, named_tensors


class HostWeights:
    """Keeps one copy of every parameter and buffer of a module in host memory, and puts it back in place.

    "Every buffer" includes non-persistent ones (``register_buffer(..., persistent=False)``), which
    ``module.state_dict()`` leaves out; the names are the module's own (``state_dict`` keys for everything
    ``state_dict`` holds). The first :meth:`capture` allocates one host buffer per distinct tensor (tied weights share
    one; pinned when the source is on a GPU); later captures copy into the same buffers, so an improvement costs one
    memcpy of the model and no allocation. :meth:`load_into` copies the values back into the module's own tensors
    (``copy_``, the same tensor objects, so optimizers and tied weights keep pointing at them).

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> layer.register_buffer("calls", torch.zeros(()), persistent=False)
        >>> copy = HostWeights()
        >>> copy.capture(layer)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(7.0)
        ...     _ = layer.calls.fill_(3.0)
        >>> copy.load_into(layer)
        >>> bool((layer.weight == 7.0).any()), float(layer.calls)
        (False, 0.0)
    """

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._slot_of: dict[str, int] = {}
        self._buffers: list[Tensor] = []

    def __eq__(self, other: object) -> bool:
        """Equal by value: the same names, tie structure and bytes (so a pickled callback equals its original)."""
        if not isinstance(other, HostWeights):
            return NotImplemented
        return (
            self._keys == other._keys
            and self._slot_of == other._slot_of
            and len(self._buffers) == len(other._buffers)
            and all(
                a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                for a, b in zip(self._buffers, other._buffers, strict=True)
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, equal by value

    @property
    def empty(self) -> bool:
        """True until the first :meth:`capture` (or :meth:`load_state`)."""
        return not self._buffers

    @property
    def nbytes(self) -> int:
        """Host memory held by the copy, in bytes."""
        return sum(b.numel() * b.element_size() for b in self._buffers)

    def capture(self, module: nn.Module) -> None:
        """Copy the module's current parameters and buffers into the host buffers (allocating them on first use or a
        change of names, ties, shapes or dtypes)."""
        named = named_tensors(module)
        slots, sources = distinct(named)
        if not self._fits(named, slots, sources):
            self._keys = list(named)
            self._slot_of = slots
            self._buffers = empty_like_on(sources, "cpu")
        copy_tensors(self._buffers, sources)

    def load_into(self, module: nn.Module) -> None:
        """Copy the held values into ``module``'s tensors, in place.

        Raises:
            RuntimeError: Before any copy, if nothing was captured or the module's names, shapes or dtypes differ from
                the copy's; the message names every tensor that differs.
        """
        if self.empty:
            raise RuntimeError("HostWeights.load_into: nothing was captured.")
        named = named_tensors(module)
        problems = [f"{k}: missing from the module" for k in self._keys if k not in named]
        problems += [f"{k}: not in the copy" for k in named if k not in self._slot_of]
        slots, targets = distinct({k: t for k, t in named.items() if k in self._slot_of})
        held: list[Tensor | None] = [None] * len(targets)  # one copy per distinct module tensor (a tie, once)
        for key, slot in slots.items():
            tensor, source = targets[slot], self._buffers[self._slot_of[key]]
            if tensor.shape != source.shape or tensor.dtype != source.dtype:
                problems.append(
                    f"{key}: {tuple(tensor.shape)} {tensor.dtype}, copy {tuple(source.shape)} {source.dtype}"
                )
            if held[slot] is None:
                held[slot] = source
        if problems:
            raise RuntimeError("HostWeights.load_into: the module does not match the copy: " + "; ".join(problems))
        copy_tensors(targets, [h for h in held if h is not None])

    def state(self) -> dict[str, Tensor]:
        """The copy as a name -> tensor dict whose values are the host buffers themselves (not copies)."""
        return {key: self._buffers[self._slot_of[key]] for key in self._keys}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Replace the copy with ``state`` (as saved by :meth:`state`), copying it into fresh host buffers."""
        slots, sources = distinct(state)
        self._keys = list(state)
        self._slot_of = slots
        self._buffers = empty_like_on(sources, "cpu")
        copy_tensors(self._buffers, sources)

    def _fits(self, named: Mapping[str, Tensor], slots: dict[str, int], sources: list[Tensor]) -> bool:
        return (
            self._keys == list(named)
            and self._slot_of == slots
            and len(self._buffers) == len(sources)
            and all(b.shape == t.shape and b.dtype == t.dtype for b, t in zip(self._buffers, sources, strict=True))
        )


def host_copy_problem(strategy: Strategy, world_size: int) -> str | None:
    """Why a :class:`HostWeights` copy of the LightningModule cannot hold its weights under ``strategy``, or None.

    The copy holds whole tensors of ``module.state_dict()``. That fails under sharding: a ``ModelParallelStrategy``
    module (FSDP2 ``fully_shard``, tensor parallelism) has DTensor parameters; ``FSDPStrategy(use_orig_params=False)``
    keeps the weights in FSDP's flat parameters, outside the LightningModule's ``state_dict``; and ``FSDPStrategy``
    sharding over several processes leaves each rank a shard (a full copy would be gathered on every rank).
    On one process FSDP does not shard (torch switches it to ``NO_SHARD``), so the copy works there.

    Example:
        >>> from lightning.pytorch.strategies import SingleDeviceStrategy
        >>> host_copy_problem(SingleDeviceStrategy("cpu"), world_size=1) is None
        True
        >>> print(host_copy_problem(FSDPStrategy(use_orig_params=False), world_size=1))  # doctest: +ELLIPSIS
        FSDPStrategy(use_orig_params=False) keeps the weights in flat FSDP parameters, outside the ...
    """
    if isinstance(strategy, ModelParallelStrategy):
        return (
            "ModelParallelStrategy shards the parameters into DTensors (fully_shard, tensor parallelism), and a copy "
            "of whole tensors cannot hold them"
        )
    if isinstance(strategy, FSDPStrategy):
        if not strategy.kwargs.get("use_orig_params", True):
            return (
                "FSDPStrategy(use_orig_params=False) keeps the weights in flat FSDP parameters, outside the "
                "LightningModule's state_dict"
            )
        sharding = getattr(strategy.sharding_strategy, "name", str(strategy.sharding_strategy))
        if world_size > 1 and sharding != "NO_SHARD":
            return (
                f"FSDPStrategy(sharding_strategy={sharding!r}) on {world_size} processes leaves each rank a shard of "
                "the weights (a full copy would be gathered on every rank)"
            )
    return None
