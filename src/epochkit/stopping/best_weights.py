"""A host-memory copy of a module's best weights, made with preallocated buffers reused across improvements."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch import Tensor, nn


class HostWeights:
    """Keeps one copy of ``module.state_dict()`` (parameters and buffers) in host memory.

    The first :meth:`capture` allocates one host buffer per distinct tensor (tied weights share one; pinned when the
    source is on a GPU); later captures copy into the same buffers with ``copy_``, so an improvement costs one memcpy
    of the model and no allocation.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> copy = HostWeights()
        >>> copy.capture(layer)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(7.0)
        >>> copy.load_into(layer)
        >>> bool((layer.weight == 7.0).any())
        False
    """

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._slot_of: dict[str, int] = {}
        self._buffers: list[Tensor] = []

    @property
    def empty(self) -> bool:
        """True until the first :meth:`capture` (or :meth:`load_state`)."""
        return not self._buffers

    @property
    def nbytes(self) -> int:
        """Host memory held by the copy, in bytes."""
        return sum(b.numel() * b.element_size() for b in self._buffers)

    def capture(self, module: nn.Module) -> None:
        """Copy the module's current state into the host buffers (allocating them on first use or a shape change)."""
        state = module.state_dict()
        slots, sources = self._layout(state)
        if not self._fits(state, slots, sources):
            self._keys = list(state)
            self._slot_of = slots
            self._buffers = [
                torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda and torch.cuda.is_available())
                for t in sources
            ]
        with torch.no_grad():
            torch._foreach_copy_(self._buffers, [t.detach() for t in sources])

    def load_into(self, module: nn.Module) -> None:
        """Load the copy into ``module`` (strict: same keys and shapes)."""
        if self.empty:
            raise RuntimeError("HostWeights.load_into: nothing was captured.")
        module.load_state_dict(self.state(), strict=True)

    def state(self) -> dict[str, Tensor]:
        """The copy as a state dict whose values are the host buffers themselves (not copies)."""
        return {key: self._buffers[self._slot_of[key]] for key in self._keys}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Replace the copy with ``state`` (as saved by :meth:`state`), copying it into fresh host buffers."""
        slots, sources = self._layout(state)
        self._keys = list(state)
        self._slot_of = slots
        self._buffers = [t.detach().to("cpu", copy=True) for t in sources]

    @staticmethod
    def _layout(state: Mapping[str, Tensor]) -> tuple[dict[str, int], list[Tensor]]:
        # Tied weights appear under several keys with one storage: copy and keep them once.
        slots: dict[str, int] = {}
        seen: dict[tuple, int] = {}
        sources: list[Tensor] = []
        for key, tensor in state.items():
            ident = (
                tensor.device,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tensor.stride(),
                tensor.dtype,
            )
            if ident not in seen or tensor.numel() == 0:
                seen[ident] = len(sources)
                sources.append(tensor)
            slots[key] = seen[ident]
        return slots, sources

    def _fits(self, state: Mapping[str, Tensor], slots: dict[str, int], sources: list[Tensor]) -> bool:
        return (
            self._keys == list(state)
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
