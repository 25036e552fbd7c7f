"""Argument checks with one message template, so every constructor fails the same way:
``ClassName(arg=value): must be ...; got ...``, naming the argument, the value and what is allowed.

A wrong type raises ``TypeError``, a value of the right type outside what is allowed ``ValueError``. Integers accept
any ``numbers.Integral`` but ``bool`` (so a NumPy integer works, ``True`` does not); numbers accept any real number
but ``bool``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection
from typing import Any, NoReturn

import torch


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (any ``numbers.Integral``, a NumPy one too) and not a ``bool``.

    Example:
        >>> import numpy as np
        >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
        (True, True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (any ``numbers.Real``, NumPy ones too) and not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def real_value(value: Any) -> float | None:
    """``float(value)`` for a real number given as a number (:func:`is_real`) or a one-element real tensor, else
    ``None`` (a ``bool``, a string, a sequence, a complex number).

    Example:
        >>> real_value(2), real_value(torch.tensor([0.5])), real_value(True), real_value("1")
        (2.0, 0.5, None, None)
    """
    if is_real(value):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        return float(value)
    return None


def is_one_of(value: Any, choices: Collection[Any]) -> bool:
    """Whether ``value`` is one of ``choices``, by type as well as value (``1`` is not ``True``)."""
    return any(value is c or (type(value) is type(c) and value == c) for c in choices)


def fail(owner: str, name: str, value: Any, allowed: str, error: type[Exception] = ValueError) -> NoReturn:
    """Raise ``error`` with the template message.

    Example:
        >>> fail("LRWarmup", "shape", "exp", "'linear' or 'cosine'")
        Traceback (most recent call last):
        ...
        ValueError: LRWarmup(shape='exp'): must be 'linear' or 'cosine'; got str 'exp'.
    """
    raise error(f"{owner}({name}={value!r}): must be {allowed}; got {type(value).__name__} {value!r}.")


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``.

    Example:
        >>> check_bool("CrossValidator", "verbose", "yes")
        Traceback (most recent call last):
        ...
        TypeError: CrossValidator(verbose='yes'): must be True or False; got str 'yes'.
    """
    if not isinstance(value, bool):
        fail(owner, name, value, "True or False", TypeError)
    return value


def check_int(owner: str, name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    Example:
        >>> check_int("CrossValidator", "seed", -1, minimum=0)
        Traceback (most recent call last):
        ...
        ValueError: CrossValidator(seed=-1): must be an int >= 0; got int -1.
    """
    allowed = "an int" + _bounds([(">=", minimum), ("<=", maximum)])
    if not is_int(value):
        fail(owner, name, value, allowed, TypeError)
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        fail(owner, name, value, allowed)
    return number


def check_number(
    owner: str,
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a ``float`` if it is a finite real number within the bounds (``minimum``/``maximum``
    inclusive, ``above``/``below`` exclusive).

    Example:
        >>> check_number("LRWarmup", "start_factor", 1.0, minimum=0.0, below=1.0)
        Traceback (most recent call last):
        ...
        ValueError: LRWarmup(start_factor=1.0): must be a finite number >= 0.0 and < 1.0; got float 1.0.
    """
    bounds = [(">=", minimum), (">", above), ("<=", maximum), ("<", below)]
    allowed = "a finite number" + _bounds(bounds)
    if not is_real(value):
        fail(owner, name, value, allowed, TypeError)
    number = float(value)
    if (
        not math.isfinite(number)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
        or (above is not None and number <= above)
        or (below is not None and number >= below)
    ):
        fail(owner, name, value, allowed)
    return number


def check_choice(owner: str, name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("CrossValidator", "reset", "zero", ("snapshot", "reinit"))
        Traceback (most recent call last):
        ...
        ValueError: CrossValidator(reset='zero'): must be one of 'snapshot', 'reinit'; got str 'zero'.
    """
    if not is_one_of(value, choices):
        fail(owner, name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_path(owner: str, name: str, value: Any) -> str | os.PathLike:
    """``value`` if it is a non-empty ``str`` or ``os.PathLike``.

    Example:
        >>> check_path("CrossValidator", "root_dir", "")
        Traceback (most recent call last):
        ...
        ValueError: CrossValidator(root_dir=''): must be a non-empty path (str or os.PathLike); got str ''.
    """
    allowed = "a non-empty path (str or os.PathLike)"
    if not isinstance(value, str | os.PathLike):
        fail(owner, name, value, allowed, TypeError)
    if not os.fspath(value):
        fail(owner, name, value, allowed)
    return value


def _bounds(bounds: list[tuple[str, float | None]]) -> str:
    parts = [f"{op} {bound}" for op, bound in bounds if bound is not None]
    return (" " + " and ".join(parts)) if parts else ""
