"""Callback state read back from a checkpoint, checked for type and range when it is loaded, with one message
template naming the callback, the checkpoint, the entry and what it must be.

A checkpoint is a file a user can edit, damage or mix up with another run's; a bad entry found only at the end of the
fit (or as a bare ``TypeError``) names nothing to act on. Each stateful callback declares what its entries must be
(a :data:`Schema`) and calls :func:`check_state` first thing in ``load_state_dict``; its ``on_load_checkpoint``
(which Lightning calls just before, with the Trainer) records the checkpoint's path with :func:`remember_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from epochkit._validation import is_int, is_real

_SOURCE = "_state_source_"
REMEDY = (
    "the checkpoint was edited, damaged or written by another run or program: resume from another checkpoint, or "
    "start the fit without `ckpt_path`"
)

Check = tuple[Callable[[Any], bool], str]
Schema = Mapping[str, Check]


class CallbackStateError(ValueError):
    """A callback's state in a checkpoint has an entry of the wrong type or out of range."""


def remember_source(callback: object, trainer: pl.Trainer) -> None:
    """Record the checkpoint ``trainer`` restores from, for :func:`check_state`'s message."""
    callback.__dict__[_SOURCE] = str(trainer.ckpt_path) if trainer.ckpt_path else None


def source(callback: object) -> str:
    """Where the state being loaded comes from, in words."""
    path = callback.__dict__.get(_SOURCE)
    return f"the checkpoint {path}" if path else "the checkpoint being restored"


def check_state(callback: object, state: Any, schema: Schema) -> None:
    """Raise :class:`CallbackStateError` unless ``state`` is a mapping whose entries named in ``schema`` (when
    present: older checkpoints may lack newer keys) satisfy their checks.

    Example:
        >>> class Warmup: ...
        >>> check_state(Warmup(), {"steps_applied": [-3]}, {"steps_applied": (int_list(0), "a list of ints >= 0")})
        Traceback (most recent call last):
        ...
        epochkit._state.CallbackStateError: Warmup: its state in the checkpoint being restored has steps_applied=[-3], \
which must be a list of ints >= 0; the checkpoint was edited, damaged or written by another run or program: resume \
from another checkpoint, or start the fit without `ckpt_path`.
    """
    owner = type(callback).__name__
    if not isinstance(state, Mapping):
        raise CallbackStateError(
            f"{owner}: its state in {source(callback)} is a {type(state).__name__}, not a mapping; {REMEDY}."
        )
    for key, (ok, allowed) in schema.items():
        if key in state and not ok(state[key]):
            value = state[key]
            shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:77]}..."
            raise CallbackStateError(
                f"{owner}: its state in {source(callback)} has {key}={shown}, which must be {allowed}; {REMEDY}."
            )


# ------------------------------------------------------------------------------------------------ checks
def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], bool]:
    """An int (NumPy ones too; not a bool) within the bounds."""
    return lambda v: is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)


def real(value: Any) -> bool:
    """A real number or a one-element real tensor."""
    return is_real(value) or (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point())


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list | tuple) and all(check(x) for x in v)


def int_list(minimum: int | None = None) -> Callable[[Any], bool]:
    return list_of(integer(minimum))


def mapping_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, Mapping) and all(check(x) for x in v.values())


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def mapping(value: Any) -> bool:
    return isinstance(value, Mapping)
