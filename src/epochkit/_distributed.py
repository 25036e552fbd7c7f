"""Small helpers over ``trainer.strategy`` so every callback takes control-flow decisions the same way.

Every function here but the exit hook is a collective under DDP: all ranks must call it, in the same order (design
invariant 2). :class:`DestroyProcessGroupAtExit` makes DDP processes on gloo exit without an abort.
"""

from __future__ import annotations

import atexit
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

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


_exit_hook_registered = False


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy this process's default process group when the interpreter exits, before it tears itself down.

    Lightning registers this for NCCL only. A gloo group left alive at exit is destroyed during interpreter
    finalization, where its worker threads can abort the process (``terminate called without an active exception``,
    SIGABRT): a finished ``ddp_spawn`` worker, or a rank of a ``ddp`` script, then dies after a successful fit.
    Registered once per process; a group already destroyed is left alone.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_destroy_process_group)
        _exit_hook_registered = True


class DestroyProcessGroupAtExit(Callback):
    """Make a DDP fit's processes exit cleanly: destroy the process group at interpreter exit, on every rank.

    Lightning destroys the ``torch.distributed`` process group at exit only for NCCL. With gloo (DDP on CPU, and
    ``ddp_spawn`` on CPU in tests and CI), the group is left to the interpreter's finalization, where its threads
    can abort a finished process with SIGABRT (``terminate called without an active exception``; the launcher then
    reports ``ProcessExitedException: process 1 terminated with signal SIGABRT`` after a fit that succeeded). Add
    this callback to such a fit; it changes nothing else, and a second fit in the same process works as before
    (the group is destroyed only when the process exits). :class:`~epochkit.CrossValidator` adds it to every fold.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2,
        ...                      callbacks=[DestroyProcessGroupAtExit()])
    """

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Runs on every rank after the strategy has initialised the process group.
        if trainer.world_size > 1:
            destroy_process_group_at_exit()
