"""Stopping criteria as pure functions: no Trainer, no state, one rule per function with its formula.

The improvement test works on Python floats and on 0-dim tensors alike, with the same arithmetic as Lightning's
``EarlyStopping`` (``current + min_delta < best`` in ``"min"`` mode), so a float32 metric gets the same decision in
both. Prechelt's criteria follow L. Prechelt, "Early Stopping - But When?", in *Neural Networks: Tricks of the Trade*,
LNCS 1524, Springer 1998, pp. 55-69; there ``E_va(t)`` is the validation error after check ``t``,
``E_opt(t) = min_{t' <= t} E_va(t')`` and a *training strip* of length ``k`` is ``k`` consecutive checks ending at a
check ``t`` divisible by ``k``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

MODES: tuple[str, ...] = ("min", "max")
MIN_DELTA_MODES: tuple[str, ...] = ("abs", "rel")
SMOOTHINGS: tuple[str, ...] = ("ema", "mean", "median")
CRITERIA: tuple[str, ...] = ("patience", "GL", "PQ", "UP")


def improvement_margin(best: Any, min_delta: float, min_delta_mode: str = "abs") -> Any:
    """The amount by which a value must beat ``best`` to count as an improvement.

    ``"abs"``: ``min_delta``. ``"rel"``: ``min_delta * |best|``, which is right for negative bests too and is 0 for a
    best of 0 (then any strict improvement counts) or an infinite best (the first value always improves).

    Args:
        best: The best value so far (float or 0-dim tensor).
        min_delta: An amount (``"abs"``) or fraction (``"rel"``); a negative one is a tolerance, as in Lightning.
        min_delta_mode: ``"abs"`` or ``"rel"``.

    Example:
        >>> improvement_margin(2.0, 0.1)
        0.1
        >>> improvement_margin(-4.0, 0.25, "rel"), improvement_margin(0.0, 0.25, "rel")
        (1.0, 0.0)
        >>> improvement_margin(float("inf"), 0.25, "rel")
        0.0
    """
    if min_delta_mode == "abs":
        return min_delta
    if min_delta_mode != "rel":
        raise ValueError(f"`min_delta_mode` must be one of {MIN_DELTA_MODES}, got {min_delta_mode!r}.")
    if not math.isfinite(float(best)):
        return 0.0
    return min_delta * abs(best)


def is_improvement(
    current: Any, best: Any, min_delta: float = 0.0, mode: str = "min", min_delta_mode: str = "abs"
) -> Any:
    """Whether ``current`` beats ``best`` by more than the margin (:func:`improvement_margin`).

    ``"min"``: ``current + margin < best``; ``"max"``: ``current - margin > best``. A change of exactly the margin is
    no improvement, as in Lightning and Keras. A negative ``min_delta`` is Lightning's tolerance: a value worse than
    the best by less than ``-min_delta`` still counts. Works on floats and on 0-dim tensors (then it returns a bool
    tensor).

    Example:
        >>> is_improvement(0.85, 1.0, min_delta=0.1), is_improvement(0.9, 1.0, min_delta=0.1)
        (True, False)
        >>> is_improvement(1.02, 1.0, min_delta=-0.05), is_improvement(1.06, 1.0, min_delta=-0.05)
        (True, False)
        >>> is_improvement(-10.5, -10.0, min_delta=0.05, min_delta_mode="rel")
        False
        >>> is_improvement(-10.6, -10.0, min_delta=0.05, min_delta_mode="rel")
        True
        >>> is_improvement(-9.4, -10.0, min_delta=0.05, mode="max", min_delta_mode="rel")
        True
        >>> is_improvement(0.0001, 0.0, min_delta=0.5, mode="max", min_delta_mode="rel")
        True
    """
    margin = improvement_margin(best, min_delta, min_delta_mode)
    if mode == "min":
        return current + margin < best
    if mode == "max":
        return current - margin > best
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")


def next_wait_count(wait_count: int, improved: bool, beat_baseline: bool = True) -> int:
    """Checks without a counted improvement so far, after one more check (Keras' rule for ``baseline``).

    The count restarts only on an improvement over the best value that also beats the baseline, so with a baseline
    training stops if the metric has not beaten it within ``patience`` checks. Without a baseline pass
    ``beat_baseline=True`` and this is Lightning's patience count.

    Example:
        >>> next_wait_count(2, improved=True), next_wait_count(2, improved=False)
        (0, 3)
        >>> next_wait_count(2, improved=True, beat_baseline=False)
        3
    """
    return 0 if improved and beat_baseline else wait_count + 1


def ema_update(previous: float | None, value: float, window: int) -> float:
    """One step of an exponential moving average with span ``window``: ``a * value + (1 - a) * previous``.

    The weight is ``a = 2 / (window + 1)`` (pandas' ``span``); the first value starts the average; ``window=1`` is
    no smoothing.

    Example:
        >>> ema = None
        >>> for v in [1.0, 0.0, 0.0]:
        ...     ema = ema_update(ema, v, window=3)
        >>> ema
        0.25
    """
    if window < 1:
        raise ValueError(f"`window` must be an int >= 1, got {window!r}.")
    if previous is None:
        return float(value)
    weight = 2.0 / (window + 1)
    return weight * float(value) + (1.0 - weight) * previous


def window_mean(values: Sequence[float], window: int) -> float:
    """The mean of the last ``window`` values (fewer while fewer exist).

    Example:
        >>> window_mean([9.0, 1.0, 2.0, 3.0], window=3)
        2.0
        >>> window_mean([4.0], window=3)
        4.0
    """
    last = _last(values, window)
    return math.fsum(last) / len(last)


def window_median(values: Sequence[float], window: int) -> float:
    """The median of the last ``window`` values (fewer while fewer exist; the mean of the middle two if even).

    Example:
        >>> window_median([0.5, 0.4, 9.0, 0.3], window=3)
        0.4
        >>> window_median([1.0, 2.0], window=3)
        1.5
    """
    return float(statistics.median(_last(values, window)))


def smoothed(method: str, history: Sequence[float], window: int, previous_ema: float | None = None) -> float:
    """The smoothed value of a metric whose raw values so far are ``history`` (the newest last).

    ``"ema"`` continues ``previous_ema`` with the newest value; ``"mean"`` and ``"median"`` look at the last
    ``window`` values.

    Example:
        >>> smoothed("mean", [3.0, 2.0, 1.0], 2), smoothed("median", [3.0, 2.0, 1.0], 3)
        (1.5, 2.0)
        >>> smoothed("ema", [3.0, 2.0, 1.0], 3, previous_ema=2.0)
        1.5
    """
    if method == "ema":
        return ema_update(previous_ema, history[-1], window)
    if method == "mean":
        return window_mean(history, window)
    if method == "median":
        return window_median(history, window)
    raise ValueError(f"`smoothing` must be one of {SMOOTHINGS} or None, got {method!r}.")


def generalization_loss(error: float, best_error: float) -> float:
    """Prechelt's generalization loss in percent: ``GL(t) = 100 * (E_va(t) / E_opt(t) - 1)``.

    ``GL_alpha`` stops after the first check with ``GL(t) > alpha``. The error must be non-negative; a best error of
    0 gives 0 while the error stays 0 and infinity once it rises.

    Example:
        >>> round(generalization_loss(0.9, 0.7), 4)
        28.5714
        >>> generalization_loss(0.7, 0.7), generalization_loss(0.1, 0.0)
        (0.0, inf)
    """
    if best_error < 0 or error < 0:
        raise ValueError(
            f"Prechelt's criteria need a non-negative error (a loss or error rate), got {error} with best {best_error}."
        )
    if best_error == 0:
        return 0.0 if error == 0 else math.inf
    return 100.0 * (error / best_error - 1.0)


def training_progress(strip: Sequence[float]) -> float:
    """Prechelt's training progress over a strip of ``k`` training errors, in per mille:
    ``P_k(t) = 1000 * (sum_{t'=t-k+1..t} E_tr(t') / (k * min_{t'=t-k+1..t} E_tr(t')) - 1)``.

    It is large while the training error still falls fast within the strip and 0 when it is flat.

    Example:
        >>> round(training_progress([1.0, 0.8, 0.6]), 4)
        333.3333
        >>> training_progress([0.5, 0.5])
        0.0
    """
    if not strip:
        raise ValueError("training_progress needs a strip of at least one training error.")
    low = min(strip)
    if low < 0:
        raise ValueError(f"Prechelt's criteria need a non-negative training error, got {low}.")
    if low == 0:
        return 0.0 if max(strip) == 0 else math.inf
    return 1000.0 * (math.fsum(strip) / (len(strip) * low) - 1.0)


def progress_quotient(gl: float, progress: float) -> float:
    """Prechelt's quotient ``PQ(t) = GL(t) / P_k(t)``; ``PQ_alpha`` stops at the first strip end with ``PQ > alpha``.

    With no training progress left (``P_k = 0``) any generalization loss gives an infinite quotient.

    Example:
        >>> progress_quotient(20.0, 40.0), progress_quotient(5.0, 0.0), progress_quotient(0.0, 0.0)
        (0.5, inf, 0.0)
    """
    if progress == 0:
        return 0.0 if gl == 0 else math.inf
    return gl / progress


def successive_increases(
    count: int, strip_end_value: float, previous_strip_end_value: float | None, mode: str = "min"
) -> int:
    """Prechelt's ``UP`` count: successive strip ends at which the validation error was worse than one strip before.

    ``UP_s`` stops at the strip end where this count reaches ``s`` (``UP_1``: the first strip end ``t`` with
    ``E_va(t) > E_va(t-k)``; ``UP_s``: ``UP_{s-1}`` stopped at ``t-k`` and ``E_va(t) > E_va(t-k)``). In ``"max"``
    mode "worse" means lower. The first strip end has nothing to compare with and counts 0.

    Example:
        >>> successive_increases(0, 0.6, 0.5), successive_increases(1, 0.7, 0.6), successive_increases(2, 0.6, 0.7)
        (1, 2, 0)
        >>> successive_increases(0, 0.6, None)
        0
    """
    if previous_strip_end_value is None:
        return 0
    worse = strip_end_value > previous_strip_end_value if mode == "min" else strip_end_value < previous_strip_end_value
    return count + 1 if worse else 0


def _last(values: Sequence[float], window: int) -> Sequence[float]:
    if window < 1:
        raise ValueError(f"`window` must be an int >= 1, got {window!r}.")
    if not values:
        raise ValueError("smoothing needs at least one value.")
    return values[-window:]
