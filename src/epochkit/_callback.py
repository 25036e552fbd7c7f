"""What every epochkit callback shares: the one lifecycle, a ``state_key`` cached per settings, and the hook on the
strategy's ``process_dataloader`` that the audit and ``SetEpoch`` use to see each train loader first.

The lifecycle (skorch's rule, the same in every callback):

* ``__init__`` validates and stores the parameters, then calls ``self._reset_state()``, so every attribute the class
  lists (its class-level annotations) exists from construction on, and ``state_dict``/``load_state_dict`` work before
  any fit without ``getattr`` guards;
* ``setup(stage="fit")`` calls ``self._reset_state()`` again, so a second fit never inherits the first one's state.
  Lightning restores a checkpoint's callback state (``load_state_dict``) after ``setup``, so a resumed fit still gets
  it. ``tests/test_contract.py`` checks both moments for every exported callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

_STATE_KEY_CACHE = "_state_key_cache_"


def cached_state_key(callback: Callback, **settings: Any) -> str:
    """``callback._generate_state_key(**settings)``, built once per value of ``settings``.

    Lightning reads ``state_key`` at every hook call (the profiler's action names), so the string is cached; the
    settings are compared at each call, so a setting changed after first use gives the new key (a
    ``functools.cached_property`` would keep the stale one).

    Example:
        >>> from epochkit import LRWarmup
        >>> warmup = LRWarmup(steps=10)
        >>> cached_state_key(warmup, steps=warmup.steps) is cached_state_key(warmup, steps=warmup.steps)
        True
        >>> warmup.steps = 20
        >>> cached_state_key(warmup, steps=warmup.steps)
        "LRWarmup{'steps': 20}"
    """
    cached = callback.__dict__.get(_STATE_KEY_CACHE)
    if cached is None or cached[0] != settings:
        cached = (settings, callback._generate_state_key(**settings))
        callback.__dict__[_STATE_KEY_CACHE] = cached
    return cached[1]


DataloaderHook = Callable[[object], None]


def hook_process_dataloader(trainer: pl.Trainer, on_train_loader: DataloaderHook) -> tuple[Any, Any]:
    """Call ``on_train_loader(loader)`` on every train loader the strategy processes, and return the patch (for
    :func:`unhook_process_dataloader`).

    Lightning creates each train loader inside the fit loop (at fit start, at every reload, on resume) and iterates it
    before any callback hook sees it; the strategy's ``process_dataloader`` is the last step between the two, where
    Lightning also sets the samplers' epoch.
    """
    strategy = trainer.strategy
    original = strategy.process_dataloader

    def process_dataloader(dataloader: object) -> object:
        processed = original(dataloader)
        if trainer.training:
            on_train_loader(processed)
        return processed

    strategy.process_dataloader = process_dataloader  # type: ignore[method-assign]
    return strategy, process_dataloader


def unhook_process_dataloader(patch: tuple[Any, Any] | None) -> None:
    """Undo :func:`hook_process_dataloader` (idempotent; a patch made over ours since is left alone)."""
    if patch is not None and patch[0].__dict__.get("process_dataloader") is patch[1]:
        del patch[0].__dict__["process_dataloader"]
