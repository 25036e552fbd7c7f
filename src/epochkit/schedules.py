r"""Learning-rate schedules with warmup: pure factor functions and the ``LambdaLR`` factories built on them.

Conventions (shared by every schedule here and by :class:`~epochkit.LRWarmup`), with ``s`` the 0-based index of
the optimizer step, ``W`` the warmup steps and ``T`` the total steps (the run's steps are ``0 .. T - 1``):

- **No step at LR 0, at either end.** A schedule's two zeros lie just outside the run: the ramp starts from
  ``f0`` one step before the first step, and the decay reaches its floor one step after the last, at the horizon
  ``T``. Warmup factors are ``w(s) = f0 + (1 - f0) * r((s + 1) / W)`` for ``s < W``, where ``f0`` is
  ``start_factor`` and ``r`` the ramp (``linear``: ``r(x) = x``; ``cosine``: ``r(x) = (1 - cos(pi x)) / 2``), so
  the first step uses ``f0 + (1 - f0) r(1/W) > 0``. The decay progress is
  ``p(s) = clip((s - W + 1) / (T - W + 1), 0, 1)``: 0 on the peak step ``W - 1``, 1 at the horizon ``T``, so the
  last step ``T - 1`` still trains, a little above the floor (with the default ``floor=0`` a step at LR 0 would
  change nothing but cost a forward and backward pass). Cosine cycles restart at the peak, as HF's and timm's do,
  so no cycle ends on a step at the floor either.
- **Peak exactly at the end of warmup**: ``w(W - 1) = 1``.
- **The floor from the horizon on**: every step ``s >= T`` uses the floor: the LR never rises past the horizon.

Relation to the anchors (each checked in ``tests/warmup/test_schedules.py`` against their formulas, restated
there): epochkit's schedule over ``T`` steps is Hugging Face ``transformers``' schedule over ``T + 1`` steps without
its first step (the one at LR 0): ``epochkit(s; W, T) == hf(s + 1; W, T + 1)`` for every ``s < T``, for the
constant, linear, cosine (``min_lr_rate`` = ``floor``), cosine with hard restarts, polynomial (``lr_end`` =
``floor`` times the LR) and warmup-stable-decay schedules (``num_decay_steps = D + 1``, ``min_lr_ratio`` = ``floor``;
HF's WSD ramps up from ``min_lr_ratio``, which is ``start_factor=floor`` here); the inverse square root, which has
no horizon, is ``hf(s + 1)``. Past the horizon HF's cosine rises again (``cos`` keeps turning); epochkit holds the
floor. timm's ``CosineLRScheduler`` and ``PolyLRScheduler`` with ``warmup_prefix=True``, ``warmup_lr_init`` =
``start_factor``, ``lr_min`` = ``floor``, ``t_initial = (T - W + 1) / cycles`` and ``cycle_limit = cycles`` are
likewise ``timm(s + 1)``, past the horizon included.

Each factor function takes an int or a NumPy array of steps (vectorised) and returns a float or an array.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast, overload

import lightning.pytorch as pl
import numpy as np
import torch
from numpy.typing import NDArray
from torch.optim.lr_scheduler import LambdaLR

from epochkit._io import atomic_path
from epochkit._validation import check_number, is_int, is_real

WarmupShape: TypeAlias = Literal["linear", "cosine"]
DecayShape: TypeAlias = Literal["linear", "cosine", "1-sqrt"]
Steps: TypeAlias = "int | NDArray[np.integer] | NDArray[np.floating]"
Factor: TypeAlias = "float | NDArray[np.float64]"

WARMUP_SHAPES: tuple[str, ...] = ("linear", "cosine")
DECAY_SHAPES: tuple[str, ...] = ("linear", "cosine", "1-sqrt")

__all__ = [
    "preview",
    "total_steps",
    "warmup_constant",
    "warmup_constant_factor",
    "warmup_cosine",
    "warmup_cosine_factor",
    "warmup_factor",
    "warmup_inverse_sqrt",
    "warmup_inverse_sqrt_factor",
    "warmup_linear",
    "warmup_linear_factor",
    "warmup_polynomial",
    "warmup_polynomial_factor",
    "warmup_stable_decay",
    "warmup_stable_decay_factor",
]


# --------------------------------------------------------------------------------------------- argument checks
def check_warmup(warmup_steps: int, shape: str = "linear", start_factor: float = 0.0) -> None:
    """Raise ``ValueError`` naming the argument unless the warmup settings are usable."""
    if not is_int(warmup_steps) or warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be an int >= 0, got {warmup_steps!r}.")
    if shape not in WARMUP_SHAPES:
        raise ValueError(f"`shape` must be one of {WARMUP_SHAPES}, got {shape!r}.")
    if not is_real(start_factor) or not 0.0 <= start_factor < 1.0:
        raise ValueError(f"`start_factor` must lie in [0, 1), got {start_factor!r}.")


def _check_horizon(warmup_steps: int, total_steps: int, floor: float) -> None:
    if not is_int(total_steps) or total_steps <= 0:
        raise ValueError(f"`total_steps` must be an int > 0, got {total_steps!r}.")
    if warmup_steps >= total_steps:
        raise ValueError(
            f"`warmup_steps` ({warmup_steps}) must be smaller than `total_steps` ({total_steps}): "
            "the decay needs at least one step."
        )
    if not is_real(floor) or not 0.0 <= floor <= 1.0:
        raise ValueError(f"`floor` is a ratio of the peak LR and must lie in [0, 1], got {floor!r}.")


# ------------------------------------------------------------------------------------------ factor functions
@overload
def _out(x: NDArray[np.float64], scalar: Literal[True]) -> float: ...
@overload
def _out(x: NDArray[np.float64], scalar: Literal[False]) -> NDArray[np.float64]: ...
@overload
def _out(x: NDArray[np.float64], scalar: bool) -> Factor: ...
def _out(x: NDArray[np.float64], scalar: bool) -> Factor:
    return float(x) if scalar else x


def _steps(step: Steps) -> tuple[NDArray[np.float64], bool]:
    s = np.asarray(step, dtype=np.float64)
    if np.any(s < 0):
        raise ValueError(f"`step` must be >= 0, got {step!r}.")
    return s, s.ndim == 0


def warmup_factor(step: Steps, warmup_steps: int, shape: WarmupShape = "linear", start_factor: float = 0.0) -> Factor:
    r"""The warmup multiplier for optimizer step ``step`` (0-based); 1 from step ``warmup_steps - 1`` on.

    .. math:: w(s) = f_0 + (1 - f_0)\, r\!\left(\min\!\left(1, \tfrac{s + 1}{W}\right)\right),\quad
              r_\text{linear}(x) = x,\quad r_\text{cosine}(x) = \tfrac{1 - \cos(\pi x)}{2}

    Example:
        >>> [warmup_factor(s, 4) for s in range(6)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
        >>> round(warmup_factor(0, 4, shape="cosine"), 4), warmup_factor(3, 4, shape="cosine")
        (0.1464, 1.0)
        >>> warmup_factor(np.arange(3), 2, start_factor=0.5).tolist()
        [0.75, 1.0, 1.0]
    """
    check_warmup(warmup_steps, shape, start_factor)
    s, scalar = _steps(step)
    if warmup_steps == 0:
        return _out(np.ones_like(s), scalar)
    x = np.minimum(1.0, (s + 1.0) / warmup_steps)
    ramp = x if shape == "linear" else 0.5 * (1.0 - np.cos(math.pi * x))
    # The last warmup step is exactly 1.0, whatever rounding the cosine does.
    return _out(np.where(x >= 1.0, 1.0, start_factor + (1.0 - start_factor) * ramp), scalar)


def _progress(s: NDArray[np.float64], start: int, stop: int) -> NDArray[np.float64]:
    """Decay progress in [0, 1]: 0 on step ``start - 1`` (the peak), 1 at step ``stop`` (the horizon) and after, so
    every step of the decay, ``start .. stop - 1``, lies strictly between."""
    return np.clip((s - start + 1.0) / (stop - start + 1.0), 0.0, 1.0)


def _decay(p: NDArray[np.float64], shape: str, floor: float, power: float = 1.0) -> NDArray[np.float64]:
    if shape == "linear":
        fall = 1.0 - p
    elif shape == "cosine":
        fall = 0.5 * (1.0 + np.cos(math.pi * p))
    elif shape == "1-sqrt":
        fall = 1.0 - np.sqrt(p)
    else:  # polynomial
        fall = (1.0 - p) ** power
    return floor + (1.0 - floor) * fall


def _with_warmup(
    s: NDArray[np.float64], warmup_steps: int, shape: WarmupShape, start_factor: float, after: NDArray[np.float64]
) -> NDArray[np.float64]:
    ramp = np.asarray(warmup_factor(s, warmup_steps, shape, start_factor))
    return np.where(s < warmup_steps, ramp, after)


def warmup_constant_factor(
    step: Steps, warmup_steps: int, shape: WarmupShape = "linear", start_factor: float = 0.0
) -> Factor:
    """Warmup, then a constant 1. The same as :func:`warmup_factor`; named for symmetry with the other schedules.

    Example:
        >>> [warmup_constant_factor(s, 2) for s in range(4)]
        [0.5, 1.0, 1.0, 1.0]
    """
    return warmup_factor(step, warmup_steps, shape, start_factor)


def warmup_linear_factor(
    step: Steps,
    warmup_steps: int,
    total_steps: int,
    floor: float = 0.0,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
) -> Factor:
    r"""Warmup, then a linear decay from 1 that reaches ``floor`` at the horizon ``T``; ``floor`` after.

    .. math:: f(s) = \text{floor} + (1 - \text{floor})(1 - p(s)),\quad p(s) = \text{clip}\!\left(
              \tfrac{s - W + 1}{T - W + 1}, 0, 1\right)

    Example:
        >>> [round(warmup_linear_factor(s, 2, 6), 3) for s in range(8)]  # steps 0..5 all train; 6, 7: past T
        [0.5, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0]
    """
    check_warmup(warmup_steps, shape, start_factor)
    _check_horizon(warmup_steps, total_steps, floor)
    s, scalar = _steps(step)
    after = _decay(_progress(s, warmup_steps, total_steps), "linear", floor)
    return _out(_with_warmup(s, warmup_steps, shape, start_factor, after), scalar)


def warmup_cosine_factor(
    step: Steps,
    warmup_steps: int,
    total_steps: int,
    cycles: int = 1,
    floor: float = 0.0,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
) -> Factor:
    r"""Warmup, then ``cycles`` half-cosine decays from 1 towards ``floor`` (hard restarts); ``floor`` from ``T`` on.

    With the cycle position ``c = (cycles * p(s)) mod 1`` in [0, 1) before the horizon (0 at the peak), every cycle
    restarts at the peak, as in HF's ``cosine_with_hard_restarts`` and timm's ``cycle_limit``; the last one reaches
    ``floor`` at the horizon (``c = 1``), so no step runs at the floor itself:

    .. math:: f(s) = \text{floor} + (1 - \text{floor})\,\tfrac{1 + \cos(\pi c)}{2}

    Example:
        >>> [round(warmup_cosine_factor(s, 1, 5), 3) for s in range(7)]
        [1.0, 0.905, 0.655, 0.345, 0.095, 0.0, 0.0]
        >>> [round(warmup_cosine_factor(s, 1, 8, cycles=2), 3) for s in range(9)]
        [1.0, 0.854, 0.5, 0.146, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    check_warmup(warmup_steps, shape, start_factor)
    _check_horizon(warmup_steps, total_steps, floor)
    if not is_int(cycles) or cycles < 1:
        raise ValueError(f"`cycles` must be an int >= 1, got {cycles!r}.")
    s, scalar = _steps(step)
    # In integers (exact for any realistic step count), so a restart lands exactly on its step: with floats,
    # cycles * p could come out as 0.999... there and give the floor instead of the peak.
    done = np.clip(s - warmup_steps + 1.0, 0.0, None) * cycles
    span = float(total_steps - warmup_steps + 1)
    c = np.where(done >= cycles * span, 1.0, np.mod(done, span) / span)
    after = _decay(c, "cosine", floor)
    return _out(_with_warmup(s, warmup_steps, shape, start_factor, after), scalar)


def warmup_polynomial_factor(
    step: Steps,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    floor: float = 0.0,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
) -> Factor:
    r"""Warmup, then a polynomial decay from 1 that reaches ``floor`` at the horizon ``T``; ``floor`` after.

    .. math:: f(s) = \text{floor} + (1 - \text{floor})(1 - p(s))^{\text{power}}

    Example:
        >>> [round(warmup_polynomial_factor(s, 1, 5, power=2.0), 4) for s in range(6)]
        [1.0, 0.64, 0.36, 0.16, 0.04, 0.0]
    """
    check_warmup(warmup_steps, shape, start_factor)
    _check_horizon(warmup_steps, total_steps, floor)
    if not power > 0:
        raise ValueError(f"`power` must be > 0, got {power!r}.")
    s, scalar = _steps(step)
    after = _decay(_progress(s, warmup_steps, total_steps), "polynomial", floor, power)
    return _out(_with_warmup(s, warmup_steps, shape, start_factor, after), scalar)


def warmup_inverse_sqrt_factor(
    step: Steps,
    warmup_steps: int,
    timescale: int | None = None,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
) -> Factor:
    r"""Warmup, then decay as the inverse square root of the steps since warmup, with no horizon.

    .. math:: f(s) = \sqrt{\tfrac{\tau}{\tau + s - W + 1}}\ \text{for}\ s \ge W - 1,\quad \tau =
              \text{timescale}\ (\text{default}\ W, \text{or}\ 10\,000\ \text{without warmup})

    With ``timescale = W`` this is the Transformer schedule ``sqrt(W / (s + 1))``.

    Example:
        >>> [round(warmup_inverse_sqrt_factor(s, 4), 4) for s in (0, 3, 7, 15)]
        [0.25, 1.0, 0.7071, 0.5]
    """
    check_warmup(warmup_steps, shape, start_factor)
    tau = timescale if timescale is not None else (warmup_steps or 10_000)
    if not is_int(tau) or tau < 1:
        raise ValueError(f"`timescale` must be an int >= 1 or None, got {timescale!r}.")
    s, scalar = _steps(step)
    after = np.sqrt(tau / (tau + np.maximum(s - warmup_steps + 1.0, 0.0)))
    return _out(_with_warmup(s, warmup_steps, shape, start_factor, after), scalar)


def warmup_stable_decay_factor(
    step: Steps,
    warmup_steps: int,
    decay_steps: int,
    total_steps: int,
    floor: float = 0.0,
    decay_shape: DecayShape = "cosine",
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
) -> Factor:
    r"""Warmup-stable-decay: warmup, hold 1, then decay over the last ``decay_steps`` steps towards ``floor``.

    The last ``D`` steps ``T - D .. T - 1`` decay, with progress ``p = (s - T + D + 1) / (D + 1)``; the floor is
    reached at the horizon ``T`` and held after. ``decay_shape`` is ``linear`` (``1 - p``), ``cosine``
    (``(1 + cos(pi p)) / 2``) or ``1-sqrt`` (``1 - sqrt(p)``).

    Example:
        >>> [round(warmup_stable_decay_factor(s, 2, 2, 6, decay_shape="linear"), 3) for s in range(7)]
        [0.5, 1.0, 1.0, 1.0, 0.667, 0.333, 0.0]
    """
    check_warmup(warmup_steps, shape, start_factor)
    _check_horizon(warmup_steps, total_steps, floor)
    if not is_int(decay_steps) or decay_steps < 1:
        raise ValueError(f"`decay_steps` must be an int >= 1, got {decay_steps!r}.")
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"`warmup_steps` + `decay_steps` ({warmup_steps} + {decay_steps}) must not exceed `total_steps` "
            f"({total_steps})."
        )
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"`decay_shape` must be one of {DECAY_SHAPES}, got {decay_shape!r}.")
    s, scalar = _steps(step)
    after = _decay(_progress(s, total_steps - decay_steps, total_steps), decay_shape, floor)
    return _out(_with_warmup(s, warmup_steps, shape, start_factor, after), scalar)


# ------------------------------------------------------------------------------------------------- factories
def _scheduler(
    optimizer: torch.optim.Optimizer, factor: Callable[..., Factor], last_epoch: int, **settings: Any
) -> LambdaLR:
    """Validate ``settings`` by evaluating the factor once, then bind them into a ``LambdaLR``."""
    factor(0, **settings)
    bound = functools.partial(factor, **settings)
    # LambdaLR calls the factor with an int step, for which every factor function returns a float.
    return LambdaLR(optimizer, lr_lambda=cast(Callable[[int], float], bound), last_epoch=last_epoch)


def warmup_constant(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_constant_factor`; call its ``step()`` after every optimizer step.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = warmup_constant(opt, warmup_steps=2)
        >>> opt.param_groups[0]["lr"]
        0.05
    """
    return _scheduler(
        optimizer, warmup_constant_factor, last_epoch, warmup_steps=warmup_steps, shape=shape, start_factor=start_factor
    )


def warmup_linear(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    floor: float = 0.0,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_linear_factor` (warmup, linear decay to ``floor`` x the peak at ``T``)."""
    return _scheduler(
        optimizer,
        warmup_linear_factor,
        last_epoch,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        floor=floor,
        shape=shape,
        start_factor=start_factor,
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    cycles: int = 1,
    floor: float = 0.0,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_cosine_factor` (warmup, ``cycles`` cosine decays to ``floor``)."""
    return _scheduler(
        optimizer,
        warmup_cosine_factor,
        last_epoch,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        cycles=cycles,
        floor=floor,
        shape=shape,
        start_factor=start_factor,
    )


def warmup_polynomial(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    floor: float = 0.0,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_polynomial_factor` (warmup, polynomial decay to ``floor``)."""
    return _scheduler(
        optimizer,
        warmup_polynomial_factor,
        last_epoch,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        power=power,
        floor=floor,
        shape=shape,
        start_factor=start_factor,
    )


def warmup_inverse_sqrt(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    timescale: int | None = None,
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_inverse_sqrt_factor` (warmup, then ``1 / sqrt`` decay)."""
    return _scheduler(
        optimizer,
        warmup_inverse_sqrt_factor,
        last_epoch,
        warmup_steps=warmup_steps,
        timescale=timescale,
        shape=shape,
        start_factor=start_factor,
    )


def warmup_stable_decay(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    decay_steps: int,
    total_steps: int,
    floor: float = 0.0,
    decay_shape: DecayShape = "cosine",
    shape: WarmupShape = "linear",
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_stable_decay_factor` (warmup, hold, decay over the last steps)."""
    return _scheduler(
        optimizer,
        warmup_stable_decay_factor,
        last_epoch,
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        total_steps=total_steps,
        floor=floor,
        decay_shape=decay_shape,
        shape=shape,
        start_factor=start_factor,
    )


# ------------------------------------------------------------------------------------------------- utilities
def total_steps(trainer: pl.Trainer) -> int:
    """The optimizer steps the whole fit will take, for use inside ``configure_optimizers``.

    It is ``trainer.estimated_stepping_batches`` (accumulation, ``limit_train_batches``, ``max_steps`` and the
    number of devices accounted for), checked to be finite.

    Raises:
        ValueError: If the run has no known length (``max_epochs=-1`` without ``max_steps``, or a train loader
            without ``__len__``).
    """
    estimate = trainer.estimated_stepping_batches
    if not math.isfinite(estimate):
        raise ValueError(
            "The number of optimizer steps of this fit is unknown (trainer.estimated_stepping_batches is inf): "
            "set Trainer(max_steps=...) or give the train loader a length."
        )
    return int(estimate)


def preview(
    make_scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
    steps: int,
    base_lr: float = 1.0,
    save_path: str | Path | None = None,
) -> NDArray[np.float64]:
    """The LR of each of ``steps`` optimizer steps under a per-step scheduler, computed before any training.

    Args:
        make_scheduler: Builds the scheduler from an optimizer, e.g. ``lambda opt: warmup_cosine(opt, 100, 1000)``.
        steps: How many optimizer steps to preview.
        base_lr: The optimizer's LR before the scheduler (1.0 shows the factor itself).
        save_path: If given, also save a PNG plot there (needs matplotlib: ``pip install epochkit[plot]``).

    Example:
        >>> preview(lambda opt: warmup_linear(opt, warmup_steps=2, total_steps=5), steps=6).tolist()
        [0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if not is_int(steps) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1, got {steps!r}.")
    check_number("preview", "base_lr", base_lr, above=0.0)  # NaN or inf would preview NaNs
    if save_path is not None:
        _require_matplotlib()
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = np.empty(steps, dtype=np.float64)
    for i in range(steps):
        lrs[i] = float(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: a no-op that keeps the scheduler from warning about the call order
        scheduler.step()
    if save_path is not None:
        _plot(lrs, Path(save_path))
    return lrs


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("preview(save_path=...) needs matplotlib: `pip install epochkit[plot]`.") from err


def _plot(lrs: NDArray[np.float64], path: Path) -> None:
    # A bare Figure renders without pyplot, so the user's matplotlib backend and open figures are left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    ax.plot(np.arange(len(lrs)), lrs)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
