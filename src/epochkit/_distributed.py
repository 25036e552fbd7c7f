"""Small helpers over ``trainer.strategy`` so every callback takes control-flow decisions the same way.

Every function here is a collective under DDP: all ranks must call it, in the same order (design invariant 2).
"""

from __future__ import annotations

from typing import Any, TypeVar

import lightning.pytorch as pl
import torch.distributed as dist

T = TypeVar("T")


def broadcast(trainer: pl.Trainer, obj: T, src: int = 0) -> T:
    """Return rank ``src``'s ``obj`` on every rank (a no-op on one process)."""
    return trainer.strategy.broadcast(obj, src=src)


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one rank."""
    return bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=False))


def all_ranks(trainer: pl.Trainer, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on all ranks."""
    return bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=True))


def gather_objects(trainer: pl.Trainer, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (pickled; for small per-epoch summaries only)."""
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
