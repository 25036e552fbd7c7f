"""``epochkit.EarlyStopping``: Lightning's ``EarlyStopping`` plus best-weight restore, warm-up, baseline, relative
``min_delta``, smoothing and Prechelt's criteria. The rules live in :mod:`epochkit.stopping.criteria`; this module is
the Lightning glue: read the metric, agree on it across ranks, apply the rules, tell the Trainer, log.

With only Lightning's arguments the decision is Lightning's own code (``_evaluate_stopping_criteria`` of Lightning's
class, called with exactly Lightning's arguments); epochkit's work (rank agreement, best-epoch tracking, withdrawing a
deferred stop, logging, restoring weights) runs around it.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import pickle
from enum import Enum
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint, Timer, WeightAveraging
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from epochkit import _distributed, _logging
from epochkit._state import (
    REMEDY,
    CallbackStateError,
    Schema,
    boolean,
    check_state,
    integer,
    list_of,
    mapping_of,
    optional,
    real,
    remember_source,
)
from epochkit._state import source as state_source
from epochkit._validation import is_int, is_one_of, real_value
from epochkit._weights import named_tensors
from epochkit.stopping import criteria
from epochkit.stopping.best_weights import HostWeights, host_copy_problem


class StoppingReason(Enum):
    """Why training stopped: Lightning's ``EarlyStoppingReason`` values plus epochkit's criteria.

    A member equals Lightning's member of the same value (``StoppingReason.PATIENCE_EXHAUSTED ==
    EarlyStoppingReason.PATIENCE_EXHAUSTED``). ``EarlyStopping.stopping_reason`` holds Lightning's own member for
    Lightning's reasons, so code written against Lightning keeps working, and a member of this enum for the new ones.
    """

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4
    BASELINE_NOT_REACHED = 5
    GENERALIZATION_LOSS = 6
    PROGRESS_QUOTIENT = 7
    SUCCESSIVE_INCREASES = 8

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoppingReason | EarlyStoppingReason):
            return bool(self.value == other.value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._name_)


_STATE_SCHEMA: Schema = {  # what a checkpoint's EarlyStopping state must hold (epochkit._state), checked at load
    "wait_count": (integer(0), "an int >= 0"),
    "stopped_epoch": (integer(0), "an int >= 0"),
    "patience": (integer(0), "an int >= 0"),
    "best_score": (real, "a number (or a one-element tensor)"),
    "stopping_reason": (optional(integer(0, 8)), "a StoppingReason value (an int from 0 to 8)"),
    "best_epoch": (optional(integer(-1)), "an int >= -1"),
    "best_epoch_score": (optional(real), "a number or None"),
    "history": (list_of(real), "a list of numbers"),
    "ema": (optional(real), "a number or None"),
    "error_opt": (optional(real), "a number or None"),
    "checks": (optional(integer(0)), "an int >= 0"),
    "train_strip": (list_of(real), "a list of numbers"),
    "last_strip_end": (optional(real), "a number or None"),
    "up_count": (optional(integer(0)), "an int >= 0"),
    "baseline_beaten": (optional(boolean), "True or False"),
    "best_weights_epoch": (optional(integer(-1)), "an int >= -1"),
    "best_weights": (optional(mapping_of(lambda t: isinstance(t, torch.Tensor))), "a mapping of names to tensors"),
}


def _reason_member(value: int) -> EarlyStoppingReason | StoppingReason:
    """Lightning's member for Lightning's values (drop-in), else epochkit's."""
    try:
        return EarlyStoppingReason(value)
    except ValueError:
        return StoppingReason(value)


# What a NaN in one of Lightning's numeric arguments does there (every comparison with NaN is False).
_NAN_EFFECT = {
    "patience": "patience never runs out",
    "min_delta": "no check ever counts as an improvement",
    "stopping_threshold": "the threshold is never reached",
    "divergence_threshold": "the threshold is never reached",
}


def _as_real(value: Any) -> float | None:
    """``float(value)`` for what Lightning's arithmetic takes as a number (int, float, bool, a numpy scalar, a
    one-element tensor), else None (a string, None, a sequence, a complex number)."""
    if isinstance(value, str | bytes) or value is None:
        return None
    if isinstance(value, Tensor) and (value.numel() != 1 or value.is_complex()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


# Lightning's methods this class extends: its hooks call them by name.
_LIGHTNING_METHODS = ("_run_early_stopping_check", "_evaluate_stopping_criteria", "_validate_condition_metric")

# Where a checkpoint keeps what Lightning's state_dict has no key for (with Lightning's arguments only).
_CHECKPOINT_KEY = "epochkit.EarlyStopping"


def _fit_is_running(trainer: pl.Trainer) -> bool:
    """True inside ``Trainer.fit`` (its loggers' runs are live); False for a bare Trainer or another stage."""
    return trainer.state.fn == TrainerFn.FITTING and trainer.state.status == TrainerStatus.RUNNING


def _missing_message(name: str, logs: dict[str, Tensor]) -> str:
    """Lightning's message for a metric that is not in ``logs``."""
    return (
        f"Early stopping conditioned on metric `{name}` which is not available."
        " Pass in or modify your `EarlyStopping` callback to use any of the following:"
        f" `{'`, `'.join(list(logs.keys()))}`"
    )


def _closest_hint(name: str, logs: dict[str, Tensor]) -> str:
    """``". Did you mean `val_loss`?"`` for the logged metric closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, [str(key) for key in logs], n=1, cutoff=0.6)
    return f". Did you mean `{close[0]}`?" if close else ""


def _on_device(value: Tensor, device: torch.device) -> Tensor:
    """``value`` on ``device``: the value the ranks agreed on (a host copy) back where the metric lives.

    Example:
        >>> _on_device(torch.tensor(0.5), torch.device("meta")).device
        device(type='meta')
    """
    return value.to(device)


def _validation_results(trainer: pl.Trainer) -> Any:
    """Lightning's result collection of the fit's validation loop (what validation logged), or None."""
    val_loop = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None)
    results = getattr(val_loop, "_results", None)
    return results if hasattr(results, "_forked_name") else None


class EarlyStopping(LightningEarlyStopping):
    r"""Lightning's ``EarlyStopping`` with what its users have asked for; a drop-in replacement.

    With only Lightning's arguments it checks the metric with Lightning's own ``_validate_condition_metric`` and
    decides with Lightning's own ``_evaluate_stopping_criteria`` (so a subclass or patch of either reaches it, on
    every DDP rank), and has Lightning's ``state_key``, ``state_dict``, ``stopping_reason`` members, messages, stop
    step and epoch. The deliberate differences, each listed in the README: a stop signalled before the Trainer's
    ``min_epochs``/``min_steps`` is withdrawn if a later check no longer asks for it (the Trainer's flag stays raised
    if another early-stopping callback or a ``Timer`` asked to stop since); a metric missing at a check names the
    closest logged metric and, with ``strict=False``, warns at the first miss; a non-numeric
    ``monitor``/``patience``/``min_delta``/threshold fails at construction instead of at a check; under DDP every rank
    decides on the same value; ``best_epoch`` is saved beside Lightning's state in a checkpoint. Every epochkit
    argument is keyword-only and off by default.

    Args:
        monitor, min_delta, patience, verbose, mode, strict, check_finite, stopping_threshold, divergence_threshold,
            check_on_train_epoch_end, log_rank_zero_only: As in Lightning's ``EarlyStopping``, with its meaning for
            every number it accepts (a numpy scalar, a one-element tensor, a float ``patience``, a negative
            ``min_delta``, which is a tolerance: a check that is worse than the best by less than ``-min_delta``
            still counts as an improvement and moves ``best_score``; ``best_epoch`` and the weights restored stay with
            the best value).
        restore_best_weights: ``True`` keeps a host-memory copy of every parameter and buffer (non-persistent buffers
            too) at the best check and loads it into the module when fit ends (stopped early or not), identical on
            every rank. With a ``WeightAveraging`` callback (e.g. ``EMAWeightAveraging``; one at most) and a
            validation metric, the copy holds the averaged weights validation ran with (a training metric: the
            training weights), and they are restored into the module and into the averaging callback's model.
            ``"checkpoint"`` instead reloads the best file of a ``ModelCheckpoint`` that monitors the same
            metric in the same mode (a clear error at setup if there is none), with ``torch.load(weights_only=True)``;
            it is the one that works with sharded models, where ``True`` fails at setup (``ModelParallelStrategy``,
            ``FSDPStrategy(use_orig_params=False)`` or ``FSDPStrategy`` sharding over several processes: see
            :func:`~epochkit.stopping.best_weights.host_copy_problem`). ``False``: keep the final weights.
        start_from_epoch: Checks in epochs before this one are ignored: they neither count toward patience, nor set
            the best value, nor stop.
        baseline: Keras' baseline: stop (``BASELINE_NOT_REACHED``) if the metric has not beaten it (by ``min_delta``)
            within ``patience`` checks; the patience count restarts only on improvements that also beat it, and, as
            in Keras, a check that improves on the best never stops.
        min_delta_mode: ``"abs"``: an improvement must beat the best by ``min_delta``; ``"rel"``: by
            ``min_delta * |best|`` (right for negative bests; any strict improvement of a best of 0 counts).
        smoothing: Compare a smoothed value instead of the raw one: ``"ema"`` (exponential moving average with span
            ``smoothing_window``), ``"mean"`` or ``"median"`` of the last ``smoothing_window`` values. The smoothed
            value is used everywhere (best value, thresholds, baseline, Prechelt); ``check_finite`` looks at the raw
            value.
        smoothing_window: The window (or EMA span) of ``smoothing``, an int >= 1.
        criterion: ``"patience"`` (Lightning's) or one of Prechelt's (1998) alternatives to patience: ``"GL"`` stops
            when the generalization loss ``100 * (E / E_opt - 1)`` exceeds ``alpha``; ``"PQ"`` when, at the end of a
            strip of ``strip_length`` checks, ``GL / P_k`` exceeds ``alpha`` (``P_k``: training progress over the
            strip from ``train_monitor``); ``"UP"`` when the metric got worse at ``successive_strips`` successive
            strip ends. GL and PQ need ``mode="min"`` and a non-negative error.
        alpha: The threshold of ``"GL"`` (percent) and ``"PQ"``; required by them, > 0.
        strip_length: Prechelt's strip length ``k`` (checks) for ``"PQ"`` and ``"UP"``.
        successive_strips: Prechelt's ``s`` for ``"UP"``; required by it, >= 1.
        train_monitor: The training loss ``"PQ"`` measures progress on (an epoch-level metric, e.g.
            ``"train_loss_epoch"``); required by ``"PQ"`` only.

    Attributes:
        best_epoch: The epoch of the best check so far (-1 before the first): the last check that improved on the
            best by more than ``min_delta`` (with a negative ``min_delta``, the check with the best value).
        restored_epoch: The epoch whose weights were loaded at the end of the last fit (-1 if none).

    Raises:
        ValueError: At construction, for an argument of the wrong type or out of range; the message names the
            argument, the value and what is allowed.
        MisconfigurationException: For an unknown ``mode`` (as Lightning); at setup for ``"checkpoint"`` restore
            without a matching ``ModelCheckpoint``, ``restore_best_weights=True`` with sharded weights or several
            weight-averaging callbacks, or a Lightning version without the methods this class extends.

    Example:
        A fit that ends with the weights of its best epoch:

        >>> import tempfile
        >>> from epochkit.demo import DigitsClassifier, DigitsDataModule
        >>> es = EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     trainer = pl.Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=2, logger=False,
        ...                          enable_checkpointing=False, enable_progress_bar=False,
        ...                          enable_model_summary=False, default_root_dir=root, callbacks=[es])
        ...     trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
        >>> es.best_epoch >= 0 and es.restored_epoch == es.best_epoch
        True
        >>> es.state_key
        "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
        >>> EarlyStopping(monitor="val_loss", patience=2.0, min_delta=-0.01).patience  # Lightning's values work
        2.0
    """

    # What checks learn (made by _reset_learned_state; Lightning's own wait_count, best_score, ... beside it).
    best_epoch: int
    _best_epoch_score: float | None  # the (smoothed) value at best_epoch
    _history: list[float]  # raw values, the last smoothing_window of them
    _ema: float | None
    _error_opt: float | None  # Prechelt's E_opt: the lowest (smoothed) value so far
    _checks: int  # counted checks (after start_from_epoch), for strips
    _train_strip: list[float]
    _last_strip_end: float | None
    _up_count: int
    _baseline_beaten: bool
    _train_current: Tensor | None  # this check's train_monitor value, for PQ
    _best_weights: HostWeights | None  # created at the first improvement
    _best_weights_epoch: int
    _validated_weights: HostWeights | None  # a copy of the averaged weights validation ran with
    _checkpoint_state: dict[str, Any] | None  # this callback's part of a checkpoint being loaded
    _check_metrics: dict[str, float]  # the smoothed value and the criterion's figures of the last check, logged
    # The state of one fit (made by _reset_state).
    restored_epoch: int
    _latch: tuple[Any, int, str | None] | None  # (reason, stopped_epoch, message) before our stop
    _raised_stop: bool  # the Trainer's flag was down when this callback's pending stop raised it
    _stops_at_latch: tuple[Any, ...]  # the other callbacks' stop requests at that moment
    _validated_fresh: bool  # a validation ran since the last check (with a weight-averaging callback)
    _validated_copied: bool  # ... and its averaged weights were copied into _validated_weights
    _validated_version: Tensor | None  # the average's update count at that validation
    _warned_missing: bool
    _warned_rank_disagreement: bool
    _warned_average_moved: bool

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        *,
        restore_best_weights: bool | Literal["checkpoint"] = False,
        start_from_epoch: int = 0,
        baseline: float | None = None,
        min_delta_mode: Literal["abs", "rel"] = "abs",
        smoothing: Literal["ema", "mean", "median"] | None = None,
        smoothing_window: int = 5,
        criterion: Literal["patience", "GL", "PQ", "UP"] = "patience",
        alpha: float | None = None,
        strip_length: int = 5,
        successive_strips: int | None = None,
        train_monitor: str | None = None,
    ) -> None:
        self._validate_lightning_arguments(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
        )
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.baseline = baseline
        self.min_delta_mode = min_delta_mode
        self.smoothing = smoothing
        self.smoothing_window = smoothing_window
        self.criterion = criterion
        self.alpha = alpha
        self.strip_length = strip_length
        self.successive_strips = successive_strips
        self.train_monitor = train_monitor
        self._validate_extra_arguments()
        # Lightning's __init__ already made its own learned state (wait_count, best_score, ...); ours is learned state
        # of the same kind, plain values that compare equal after a pickle round trip, kept beside it so that
        # state_dict/load_state_dict see it before any setup.
        self._reset_learned_state()
        self._reset_state()

    # ------------------------------------------------------------------ arguments

    @staticmethod
    def _bad(name: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"EarlyStopping: `{name}={value!r}` is invalid; {allowed}.")

    @classmethod
    def _validate_lightning_arguments(cls, monitor: Any, **numbers: Any) -> None:
        """Lightning's arguments: every number Lightning's arithmetic accepts, with its meaning; only what cannot
        work there (a non-string monitor, a non-numeric value) fails here, at construction instead of at a check."""
        if not isinstance(monitor, str) or not monitor:
            raise cls._bad("monitor", monitor, "it must be the name of a logged metric (a non-empty str)")
        for name, value in numbers.items():
            optional = name.endswith("_threshold")
            if value is None and optional:
                continue
            real = _as_real(value)
            if real is None:
                allowed = "a real number (int, float, numpy scalar or one-element tensor)"
                raise cls._bad(name, value, f"it must be {allowed}{' or None' if optional else ''}, as in Lightning")
            if math.isnan(real):
                rank_zero_warn(
                    f"EarlyStopping({name}={value!r}): every comparison with NaN is False, so {_NAN_EFFECT[name]}"
                    " (Lightning's EarlyStopping does the same). Pass a number to mean something.",
                    category=UserWarning,
                )

    def _validate_extra_arguments(self) -> None:
        bad = self._bad
        if self.min_delta_mode not in criteria.MIN_DELTA_MODES:
            raise bad("min_delta_mode", self.min_delta_mode, f"allowed: {list(criteria.MIN_DELTA_MODES)}")
        if not is_one_of(self.restore_best_weights, (True, False, "checkpoint")):
            raise bad("restore_best_weights", self.restore_best_weights, "allowed: True, False, 'checkpoint'")
        if not is_int(self.start_from_epoch) or self.start_from_epoch < 0:
            raise bad("start_from_epoch", self.start_from_epoch, "it must be an int >= 0")
        baseline = real_value(self.baseline) if self.baseline is not None else 0.0
        if baseline is None or not math.isfinite(baseline):
            raise bad("baseline", self.baseline, "it must be a finite number or None")
        if self.smoothing is not None and self.smoothing not in criteria.SMOOTHINGS:
            raise bad("smoothing", self.smoothing, f"allowed: {list(criteria.SMOOTHINGS)} or None")
        if not is_int(self.smoothing_window) or self.smoothing_window < 1:
            raise bad("smoothing_window", self.smoothing_window, "it must be an int >= 1 (values averaged)")
        if self.criterion not in criteria.CRITERIA:
            raise bad("criterion", self.criterion, f"allowed: {list(criteria.CRITERIA)}")
        if not is_int(self.strip_length) or self.strip_length < 1:
            raise bad("strip_length", self.strip_length, "it must be an int >= 1 (checks per strip)")
        if self.criterion in ("GL", "PQ"):
            alpha = real_value(self.alpha)
            if alpha is None or not 0 < alpha < math.inf:  # inf would never stop
                raise bad("alpha", self.alpha, f"criterion={self.criterion!r} needs a finite number > 0")
            if self.mode != "min":
                raise bad(
                    "mode", self.mode, f"criterion={self.criterion!r} is defined on an error to minimise: use 'min'"
                )
        elif self.alpha is not None:
            raise bad("alpha", self.alpha, "it only applies to criterion='GL' or 'PQ'; leave it None")
        if self.criterion == "PQ":
            if not isinstance(self.train_monitor, str) or not self.train_monitor:
                raise bad("train_monitor", self.train_monitor, "criterion='PQ' needs the name of a training loss")
        elif self.train_monitor is not None:
            raise bad("train_monitor", self.train_monitor, "it only applies to criterion='PQ'; leave it None")
        if self.criterion == "UP":
            if not is_int(self.successive_strips) or self.successive_strips < 1:  # type: ignore[operator]
                raise bad("successive_strips", self.successive_strips, "criterion='UP' needs an int >= 1")
        elif self.successive_strips is not None:
            raise bad("successive_strips", self.successive_strips, "it only applies to criterion='UP'; leave it None")

    @property
    def _extras_in_use(self) -> bool:
        return any(getattr(self, name) != default for name, default in _EXTRA_DEFAULTS.items())

    @property
    def _own_criteria(self) -> bool:
        """Whether an epochkit argument changes the decision itself (else Lightning's method decides)."""
        return (
            self.criterion != "patience"
            or self.smoothing is not None
            or self.baseline is not None
            or self.min_delta_mode != "abs"
        )

    @property
    def _signed_min_delta(self) -> Any:
        """``min_delta`` as the user gave it: Lightning stores it negated in ``"min"`` mode."""
        return self.min_delta if self.mode == "max" else -self.min_delta

    # ------------------------------------------------------------------ state

    def _reset_learned_state(self) -> None:
        """What checks learn, made once in ``__init__``: like Lightning's own ``wait_count``/``best_score`` (which its
        ``setup`` never resets), it carries over to a later fit of the same instance (drop-in), and a checkpoint
        restores it."""
        self.best_epoch = -1
        self._best_epoch_score = None
        self._history = []
        self._ema = None
        self._error_opt = None
        self._checks = 0
        self._train_strip = []
        self._last_strip_end = None
        self._up_count = 0
        self._baseline_beaten = False
        self._train_current = None
        self._best_weights = None
        self._best_weights_epoch = -1
        self._validated_weights = None
        self._checkpoint_state = None
        self._check_metrics = {}

    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.restored_epoch = -1
        self._latch = None
        self._raised_stop = False
        self._stops_at_latch = ()
        self._validated_fresh = self._validated_copied = False
        self._validated_version = None
        self._warned_missing = self._warned_rank_disagreement = self._warned_average_moved = False

    def _epochkit_state(self) -> dict[str, Any]:
        """What Lightning's ``state_dict`` has no key for and a resumed run needs."""
        return {"best_epoch": self.best_epoch, "best_epoch_score": self._best_epoch_score}

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if not self._extras_in_use:
            # Exactly Lightning's keys: checkpoints load into either class. best_epoch travels beside it in the
            # checkpoint (on_save_checkpoint).
            return state
        state.update(
            **self._epochkit_state(),
            history=list(self._history),
            ema=self._ema,
            error_opt=self._error_opt,
            checks=self._checks,
            train_strip=list(self._train_strip),
            last_strip_end=self._last_strip_end,
            up_count=self._up_count,
            baseline_beaten=self._baseline_beaten,
        )
        if self.restore_best_weights is True and self._best_weights is not None and not self._best_weights.empty:
            # Copies, so a checkpoint written asynchronously never sees a later improvement.
            state["best_weights"] = {k: v.clone() for k, v in self._best_weights.state().items()}
            state["best_weights_epoch"] = self._best_weights_epoch
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # With Lightning's arguments only, best_epoch came beside the state, in the checkpoint (on_load_checkpoint,
        # which Lightning calls just before this).
        beside, self._checkpoint_state = self._checkpoint_state or {}, None
        if not isinstance(state_dict, dict):
            check_state(self, state_dict, _STATE_SCHEMA)  # names the callback and the checkpoint
        state_dict = {**beside, **state_dict}
        check_state(self, state_dict, _STATE_SCHEMA)
        # Lightning's loader only knows its own reasons and would reject epochkit's (values 5-8): hand it a neutral
        # value, then set the real member.
        super().load_state_dict({**state_dict, "stopping_reason": 0})
        self.stopping_reason = _reason_member(int(state_dict.get("stopping_reason", 0)))  # type: ignore[assignment]
        self.best_epoch = int(state_dict.get("best_epoch", -1))
        best_epoch_score = state_dict.get("best_epoch_score")
        self._best_epoch_score = None if best_epoch_score is None else float(best_epoch_score)
        self._history = [float(v) for v in state_dict.get("history", [])]
        self._ema = state_dict.get("ema")
        self._error_opt = state_dict.get("error_opt")
        self._checks = int(state_dict.get("checks", 0))
        self._train_strip = [float(v) for v in state_dict.get("train_strip", [])]
        self._last_strip_end = state_dict.get("last_strip_end")
        self._up_count = int(state_dict.get("up_count", 0))
        self._baseline_beaten = bool(state_dict.get("baseline_beaten", False))
        self._best_weights = None
        self._best_weights_epoch = int(state_dict.get("best_weights_epoch", -1))
        if state_dict.get("best_weights") is not None:
            self._best_weights = HostWeights()
            self._best_weights.load_state(state_dict["best_weights"])

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """With Lightning's arguments only, ``state_dict`` has exactly Lightning's keys; ``best_epoch`` (which a
        resumed run logs and restores by) is saved beside it, under the checkpoint's ``"epochkit.EarlyStopping"``
        entry, keyed by ``state_key``. Lightning's class loads such a checkpoint unchanged."""
        if not self._extras_in_use:
            checkpoint.setdefault(_CHECKPOINT_KEY, {})[self.state_key] = self._epochkit_state()

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        remember_source(self, trainer)
        beside = checkpoint.get(_CHECKPOINT_KEY)
        self._checkpoint_state = dict(beside.get(self.state_key) or {}) if isinstance(beside, dict) else None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Restored best weights are checked against the module now (callback states are loaded before fit start),
        # not when they are put back at the end of the fit.
        if self._best_weights is not None:
            have = {k: tuple(v.shape) for k, v in self._best_weights.state().items()}
            want = {k: tuple(v.shape) for k, v in named_tensors(pl_module).items()}
            wrong = sorted(k for k in have if want.get(k, have[k]) != have[k]) + sorted(set(have) - set(want))
            if wrong:
                name = wrong[0]
                raise CallbackStateError(
                    f"EarlyStopping: its best weights in {state_source(self)} do not fit the module ({len(wrong)} "
                    f"tensor(s); {name!r}: {have[name]} in the checkpoint, {want.get(name, 'absent')} in the module); "
                    f"{REMEDY}."
                )

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        missing = [name for name in _LIGHTNING_METHODS if not callable(getattr(LightningEarlyStopping, name, None))]
        if missing:
            # Lightning's hooks call these by name: after a rename, ours would silently never run.
            raise MisconfigurationException(
                "epochkit.EarlyStopping extends Lightning's EarlyStopping through its methods"
                f" {list(_LIGHTNING_METHODS)}, but Lightning {pl.__version__} has no {missing}. Please report it to"
                " epochkit with your Lightning version; until then, use Lightning's EarlyStopping or a Lightning"
                " version epochkit supports."
            )
        self._reset_state()
        if self.restore_best_weights == "checkpoint":
            self._matching_checkpoint(trainer)
        if self.restore_best_weights is True:
            problem = host_copy_problem(trainer.strategy, trainer.world_size)
            if problem is not None:
                raise MisconfigurationException(
                    "EarlyStopping(restore_best_weights=True) keeps a host-memory copy of the LightningModule's"
                    f" weights, which cannot hold them here: {problem}. Use"
                    f" restore_best_weights='checkpoint' with a ModelCheckpoint(monitor={self.monitor!r},"
                    f" mode={self.mode!r}) (the strategy saves and reloads sharded weights), or"
                    " restore_best_weights=False."
                )
        if self.criterion == "PQ" and not self._check_on_train_epoch_end:
            # At validation end Lightning has not yet computed this epoch's training metrics: P_k would read a
            # missing or one-epoch-old training loss.
            raise MisconfigurationException(
                "EarlyStopping(criterion='PQ') needs this epoch's training loss, which exists only when the check"
                " runs at the end of the training epoch, but here it runs at validation end"
                f" (Trainer val_check_interval="
                f"{trainer.val_check_interval!r}, check_val_every_n_epoch={trainer.check_val_every_n_epoch!r})."
                " Validate once per epoch and leave check_on_train_epoch_end unset (or True)."
            )
        if self.restore_best_weights:
            averagers = self._averagers(trainer)
            for averager in averagers:
                if not hasattr(averager, "_average_model"):
                    raise MisconfigurationException(
                        f"EarlyStopping(restore_best_weights={self.restore_best_weights!r}) restores the averaged"
                        f" weights into {type(averager).__name__}'s averaged model, which this Lightning version"
                        " keeps elsewhere (no `_average_model`). Please report it to epochkit with your Lightning"
                        " version."
                    )
            if self.restore_best_weights is True and len(averagers) > 1:
                raise MisconfigurationException(
                    "EarlyStopping(restore_best_weights=True) keeps the averaged weights validation ran with, but the"
                    f" Trainer has {len(averagers)} weight-averaging callbacks"
                    f" ({', '.join(type(a).__name__ for a in averagers)}): each swaps its own average in and out"
                    " around validation, so no one of them holds the evaluated weights. Use one."
                )
            if self.restore_best_weights is True and averagers and _validation_results(trainer) is None:
                raise MisconfigurationException(
                    "EarlyStopping(restore_best_weights=True) with weight averaging tells a validation metric (which"
                    " describes the averaged weights) from a training metric by Lightning's validation results"
                    " (`trainer.fit_loop.epoch_loop.val_loop._results`), which this Lightning version keeps"
                    " elsewhere. Please report it to epochkit with your Lightning version."
                )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_validation(trainer)
        super().on_validation_end(trainer, pl_module)

    def _note_validation(self, trainer: pl.Trainer) -> None:
        """With a weight-averaging callback, keep track of the averaged weights this validation ran with.

        Lightning's ``WeightAveraging`` swaps its average into the module at validation epoch start and back at
        validation epoch end (before this hook), so its averaged model now holds exactly the weights validation ran
        with. They are copied to host memory here only if they could be needed and lost: when the check runs at
        train epoch end and the average may be updated before it (a per-epoch update at this epoch's end, or
        training steps after a mid-epoch validation). Otherwise the check copies them from the averaged model, and
        only if the metric improved.
        """
        if self.restore_best_weights is not True or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        average = self._average_model(trainer)
        if average is None or not self._monitor_is_validated(trainer):
            return
        self._validated_fresh = True
        self._validated_copied = False
        self._validated_version = average.n_averaged.detach().clone()  # stays on its device: no host sync here
        if self._check_on_train_epoch_end and self._average_may_move_before_the_check(trainer):
            if self._validated_weights is None:
                self._validated_weights = HostWeights()
            self._validated_weights.capture(average.module)
            self._validated_copied = True

    def _average_may_move_before_the_check(self, trainer: pl.Trainer) -> bool:
        (averager,) = self._averagers(trainer)
        more_steps_this_epoch = not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return more_steps_this_epoch or bool(averager.should_update(epoch_idx=trainer.current_epoch))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights is True:
            self._restore_from_host_copy(trainer, pl_module)
        elif self.restore_best_weights == "checkpoint":
            self._restore_from_checkpoint(trainer)
        if self.restored_epoch >= 0:
            self._restore_into_averagers(trainer, pl_module)
        reason = self.stopping_reason
        if reason.value == 0:
            text = f"**NOT_STOPPED**: training ended after {trainer.current_epoch} epochs without an early stop."
        else:
            text = f"**{reason.name}** at epoch {self.stopped_epoch}: {self.stopping_reason_message}"
        if self.best_epoch >= 0:
            text += f"\n\nBest {self.monitor}: {self._best_value_text()} at epoch {self.best_epoch}."
        if self.restored_epoch >= 0:
            text += f"\n\nRestored the weights of epoch {self.restored_epoch}."
        if _fit_is_running(trainer):
            _logging.log_text(trainer, self._tag("reason"), text)
            if self.restored_epoch >= 0:
                _logging.log_scalars(trainer, {self._tag("restored_epoch"): float(self.restored_epoch)})

    def _best_value_text(self) -> str:
        """The (smoothed) value at ``best_epoch``; Lightning's ``best_score`` where that is unknown (a checkpoint
        written by Lightning's class)."""
        value = self._best_epoch_score if self._best_epoch_score is not None else float(self.best_score)
        return f"{value:.6g}"

    # ------------------------------------------------------------------ the check

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        """Read the metric (agreed across ranks), apply the criteria, tell the Trainer, log."""
        if getattr(trainer, "fast_dev_run", False):  # disabled with fast_dev_run, as in Lightning
            return
        validated_fresh, self._validated_fresh = self._validated_fresh, False
        logs = trainer.callback_metrics
        current = self._agreed_metric(trainer, logs, self.monitor)
        if current is None:
            return
        train_current = None
        if self.train_monitor is not None:
            train_current = self._agreed_metric(trainer, logs, self.train_monitor)
            if train_current is None:
                return
        epoch = trainer.current_epoch
        if epoch < self.start_from_epoch:
            if self.verbose:
                self._log_info(
                    trainer,
                    f"Epoch {epoch} < start_from_epoch={self.start_from_epoch}: check ignored.",
                    self.log_rank_zero_only,
                )
            return

        before = (self.stopping_reason, self.stopped_epoch, self.stopping_reason_message)
        best_before = self.best_score
        self._check_metrics = {}
        self._train_current = train_current
        should_stop, reason = self._evaluate_stopping_criteria(current)
        new_best = self.best_score is not best_before and self._beats_best_epoch(self.best_score)
        if new_best:
            self.best_epoch = epoch
            self._best_epoch_score = float(self.best_score)

        # stop every ddp process if any world process decides to stop
        should_stop = bool(trainer.strategy.reduce_boolean_decision(should_stop, all=False))
        if should_stop:
            if self._latch is None:
                # This callback's stop claim; it may withdraw it while the Trainer cannot stop yet (min_epochs /
                # min_steps not met), if a later check no longer asks to stop.
                self._latch = before
                self._raised_stop = not trainer.should_stop
                self._stops_at_latch = self._stop_requests(trainer)
            trainer.should_stop = True  # as Lightning: the Trainer stops as soon as min_epochs / min_steps allow
            self.stopped_epoch = epoch
            self.stopping_reason_message = reason
        elif self._latch is not None:
            self._withdraw_stop(trainer, current)
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

        if new_best and self.restore_best_weights is True and trainer.lightning_module is not None:
            self._capture_best(trainer, trainer.lightning_module, epoch, validated_fresh)
        self._log_check(trainer, should_stop)

    def _beats_best_epoch(self, best: Tensor) -> bool:
        """Whether Lightning's new ``best_score`` is strictly better than the value at ``best_epoch``.

        With ``min_delta >= 0`` every improvement is (the best epoch is the last improvement, as in Keras). A
        negative ``min_delta`` is Lightning's tolerance: a value worse than the best by less than ``-min_delta``
        counts as an improvement and moves ``best_score``, but the best epoch (and the weights restored) stays with
        the best value.
        """
        if self._best_epoch_score is None:
            return True
        value = float(best)
        return value < self._best_epoch_score if self.mode == "min" else value > self._best_epoch_score

    def _stop_requests(self, trainer: pl.Trainer) -> tuple[Any, ...]:
        """The stop requests of the other callbacks that keep them in their state: every other early-stopping
        callback (Lightning's or ours) and ``Timer``. One entry per callback, in the Trainer's order."""
        requests: list[Any] = []
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, LightningEarlyStopping) and callback is not self:
                requests.append((callback.stopped_epoch, callback.stopping_reason, callback.stopping_reason_message))
            elif isinstance(callback, Timer):
                remaining = callback.time_remaining()
                requests.append(remaining is not None and remaining <= 0)
        return tuple(requests)

    def _withdraw_stop(self, trainer: pl.Trainer, current: Tensor) -> None:
        """A stop this callback signalled has not happened yet (the Trainer's min_epochs / min_steps were not met),
        and this check no longer asks for it: Lightning would stop anyway; we withdraw our claim and keep training,
        unless another callback asked to stop before us or since."""
        assert self._latch is not None
        signalled_at, signalled_reason = self.stopped_epoch, self.stopping_reason
        self.stopping_reason, self.stopped_epoch, self.stopping_reason_message = self._latch
        self._latch = None
        others = self._stop_requests(trainer) != self._stops_at_latch
        where = (
            f"EarlyStopping: withdrew the stop signalled at epoch {signalled_at} ({signalled_reason.name}), which was"
            f" waiting for the Trainer's min_epochs={trainer.fit_loop.min_epochs} /"
            f" min_steps={trainer.fit_loop.min_steps}: the check at epoch {trainer.current_epoch}"
            f" ({self.monitor} = {float(current):.6g}) no longer asks to stop"
        )
        if self._raised_stop and not others:
            trainer.should_stop = False
            rank_zero_info(f"{where}, so training continues.")
        elif trainer.should_stop:
            asked = "since" if self._raised_stop else "before this one did"
            rank_zero_info(f"{where}, but another callback asked to stop {asked}: the Trainer still stops.")

    def _agreed_metric(self, trainer: pl.Trainer, logs: dict[str, Tensor], name: str) -> Tensor | None:
        """The metric's value, the same on every rank: the lowest rank that has it decides.

        For the monitored metric, every rank asks Lightning's ``_validate_condition_metric`` (so an override or a
        patch of it is honoured on every rank), then the ranks agree: if it raised on any rank, every rank raises;
        the value is the lowest rank's whose check passed. Every rank enters the same collective whether or not it
        has the metric, so a metric missing on one rank cannot hang the others.
        """
        is_monitor = name == self.monitor
        if trainer.world_size <= 1:
            if is_monitor:
                if not self._validate_condition_metric(logs):  # Lightning's hook, as Lightning calls it
                    return None
                return logs[name].squeeze()  # as Lightning: a shape-[1] metric is a scalar
            value = logs.get(name)
            if value is None:
                self._missing_metric(name, logs, missing_on=None)
                return None
            return value.squeeze()

        error: Exception | None = None
        if is_monitor:
            try:
                valid = self._validate_condition_metric(logs)
            except Exception as err:  # raised on every rank below, after the ranks agreed
                valid, error = False, err
        else:
            valid = logs.get(name) is not None
        value = logs.get(name)
        value = value.squeeze() if valid and value is not None else None
        local = None if value is None else value.detach().to("cpu", copy=True)
        raised = None if error is None else str(error)
        gathered = _distributed.gather_objects(trainer, (local, raised))  # [ours] when no process group is up
        values = [v for v, _ in gathered]
        missing = [rank for rank, v in enumerate(values) if v is None]
        present = [v for v in values if v is not None]
        errors = [(rank, message) for rank, (_, message) in enumerate(gathered) if message is not None]
        if errors:
            raise self._agreed_error(error, errors, missing if present else [])
        if missing:
            if not is_monitor:
                self._missing_metric(name, logs, missing_on=missing if present else None)  # raises if strict
            if not present:
                return None  # skipped on every rank (each rank's _validate_condition_metric warned as Lightning's)
            if is_monitor and not self._warned_missing:
                self._warned_missing = True
                rank_zero_warn(
                    f"EarlyStopping: `{name}` did not pass the check on rank(s) {missing} (missing there, or"
                    " `_validate_condition_metric` returned False); every rank uses the value of rank"
                    f" {values.index(present[0])} (warned once).",
                    category=RuntimeWarning,
                )
        chosen: Tensor = present[0]
        disagree = any(not torch.equal(v, chosen) for v in present[1:])
        if disagree and trainer.is_global_zero and not self._warned_rank_disagreement:
            self._warned_rank_disagreement = True
            rank_zero_warn(
                f"EarlyStopping: `{name}` differs across ranks ({[float(v) for v in present]}); every rank uses"
                f" the first rank's value {float(chosen)}. Log it with `sync_dist=True` (or a torchmetrics"
                " Metric) to stop on the value of the whole dataset.",
                category=RuntimeWarning,
            )
        # Lightning keeps the metric (and so best_score) on the metric's device; the gathered copy is on the host.
        return _on_device(chosen, value.device if value is not None else trainer.strategy.root_device)

    @staticmethod
    def _agreed_error(own: Exception | None, errors: list[tuple[int, str]], missing_on: list[int]) -> Exception:
        """The error every rank raises when ``_validate_condition_metric`` raised on some: a rank that raised
        re-raises its own exception, the others a ``RuntimeError`` with the first one's message; both say where."""
        ranks = [rank for rank, _ in errors]
        if missing_on and missing_on == ranks:
            where = f" (it is missing on rank(s) {missing_on} only)"
        else:
            where = f" (raised by `_validate_condition_metric` on rank(s) {ranks})"
        if own is not None:
            if own.args and isinstance(own.args[0], str):
                own.args = (own.args[0] + where, *own.args[1:])
            return own
        return RuntimeError(errors[0][1] + where)

    @override
    def _validate_condition_metric(self, logs: dict[str, Tensor]) -> bool:
        """Lightning's check that the monitored metric was logged (raise, warn or skip), called as Lightning's class
        calls it (so a patch of Lightning's method, or an override in a subclass, decides here too), plus the
        closest logged name in its error and, with ``strict=False``, a warning at the first check that misses it."""
        try:
            valid = super()._validate_condition_metric(logs)
        except RuntimeError as err:
            hint = _closest_hint(self.monitor, logs)
            if hint and err.args and isinstance(err.args[0], str) and not err.args[0].endswith(hint):
                err.args = (err.args[0] + hint, *err.args[1:])
            raise
        if not valid and logs.get(self.monitor) is None and not self.verbose > 0 and not self._warned_missing:
            # Lightning says nothing here unless verbose: a misspelled monitor would silently never stop.
            self._warned_missing = True
            rank_zero_warn(
                f"EarlyStopping(strict=False): a check found no `{self.monitor}` and was skipped, as every later check"
                f" that misses it will be (warned once). {_missing_message(self.monitor, logs)}"
                f"{_closest_hint(self.monitor, logs)}",
                category=RuntimeWarning,
            )
        return valid

    def _missing_metric(self, name: str, logs: dict[str, Tensor], missing_on: list[int] | None) -> None:
        """Lightning's treatment of a missing metric for ``train_monitor``: raise if strict, else warn."""
        error_msg = _missing_message(name, logs)
        if missing_on is not None:
            error_msg += f" (it is missing on rank(s) {missing_on} only)"
        error_msg += _closest_hint(name, logs)
        if self.strict:
            raise RuntimeError(error_msg)
        if self.verbose > 0:
            rank_zero_warn(error_msg, category=RuntimeWarning)
        elif not self._warned_missing:
            self._warned_missing = True
            rank_zero_warn(
                f"EarlyStopping(strict=False): a check found no `{name}` and was skipped, as every later check that"
                f" misses it will be (warned once). {error_msg}",
                category=RuntimeWarning,
            )

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        """Lightning's own method when epochkit's decision arguments are at their defaults; else Lightning's rules
        (same order, arithmetic and messages) extended by smoothing, baseline, relative ``min_delta`` and Prechelt."""
        if not self._own_criteria:
            return super()._evaluate_stopping_criteria(current)
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {self.best_score:.3f}. Signaling Trainer to stop."
            )
        value = self._smooth(current)
        if self.stopping_threshold is not None and self.monitor_op(value, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (
                "Stopping threshold reached:"
                f" {self.monitor} = {value} {self.order_dict[self.mode]} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self.monitor_op(-value, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (
                "Divergence threshold reached:"
                f" {self.monitor} = {value} {self.order_dict[self.mode]} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )

        min_delta = self._signed_min_delta
        should_stop, reason = False, None
        improved = bool(
            criteria.is_improvement(value, self.best_score.to(value.device), min_delta, self.mode, self.min_delta_mode)
        )
        if improved:
            reason = self._improvement_message(value)
            self.best_score = value
            beat_baseline = self.baseline is None or bool(
                criteria.is_improvement(value, self.baseline, min_delta, self.mode, self.min_delta_mode)
            )
            self._baseline_beaten = self._baseline_beaten or (self.baseline is not None and beat_baseline)
        else:
            beat_baseline = False
        self.wait_count = criteria.next_wait_count(self.wait_count, improved, beat_baseline)
        # Keras: a check that improves on the best never stops, even while the baseline is not beaten yet.
        if not improved and self.wait_count >= self.patience:
            if self.baseline is not None and not self._baseline_beaten:
                should_stop = True
                self.stopping_reason = StoppingReason.BASELINE_NOT_REACHED  # type: ignore[assignment]
                reason = (
                    f"Monitored metric {self.monitor} did not beat the baseline {self.baseline} in the last"
                    f" {self.wait_count} records. Best score: {self.best_score:.3f}. Signaling Trainer to stop."
                )
            elif self.criterion == "patience":
                should_stop = True
                self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
                reason = (
                    f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
                    f" Best score: {self.best_score:.3f}. Signaling Trainer to stop."
                )
        train_value = None if self._train_current is None else float(self._train_current)
        prechelt = self._prechelt(float(value), train_value)
        if not should_stop and prechelt is not None:
            should_stop, reason = True, prechelt
        return should_stop, reason

    def _smooth(self, current: Tensor) -> Tensor:
        if self.smoothing is None:
            return current
        self._history = [*self._history, float(current)][-self.smoothing_window :]
        value = criteria.smoothed(self.smoothing, self._history, self.smoothing_window, self._ema)
        if self.smoothing == "ema":
            self._ema = value
        self._check_metrics["smoothed"] = value
        return torch.tensor(value, dtype=current.dtype, device=current.device)

    def _prechelt(self, value: float, train_value: float | None) -> str | None:
        """Prechelt's criterion on this check, or None: the stop message if it fires."""
        if self.criterion == "patience":
            return None
        self._checks += 1
        k = self.strip_length
        strip_end = self._checks % k == 0
        if self.criterion in ("GL", "PQ"):
            self._error_opt = value if self._error_opt is None else min(self._error_opt, value)
            try:
                gl = criteria.generalization_loss(value, self._error_opt)
            except ValueError as err:
                raise ValueError(f"EarlyStopping(criterion={self.criterion!r}) on `{self.monitor}`: {err}") from err
            self._check_metrics["generalization_loss"] = gl
            assert self.alpha is not None
            if self.criterion == "GL" and gl > self.alpha:
                self.stopping_reason = StoppingReason.GENERALIZATION_LOSS  # type: ignore[assignment]
                return (
                    f"Generalization loss of {self.monitor}: GL = 100 * ({value:.6g} / {self._error_opt:.6g} - 1)"
                    f" = {gl:.3f} > alpha = {self.alpha}. Signaling Trainer to stop."
                )
            if self.criterion == "PQ":
                assert train_value is not None
                self._train_strip = [*self._train_strip, train_value][-k:]
                if strip_end:
                    try:
                        progress = criteria.training_progress(self._train_strip)
                    except ValueError as err:
                        raise ValueError(f"EarlyStopping(criterion='PQ') on `{self.train_monitor}`: {err}") from err
                    pq = criteria.progress_quotient(gl, progress)
                    self._check_metrics.update(training_progress=progress, progress_quotient=pq)
                    if pq > self.alpha:
                        self.stopping_reason = StoppingReason.PROGRESS_QUOTIENT  # type: ignore[assignment]
                        return (
                            f"Progress quotient of {self.monitor} over {self.train_monitor}: PQ = GL / P_{k}"
                            f" = {gl:.3f} / {progress:.3f} = {pq:.3f} > alpha = {self.alpha} at the end of strip"
                            f" {self._checks // k}. Signaling Trainer to stop."
                        )
            return None
        # UP: the metric got worse than one strip earlier at `successive_strips` successive strip ends.
        if strip_end:
            self._up_count = criteria.successive_increases(self._up_count, value, self._last_strip_end, self.mode)
            self._last_strip_end = value
            self._check_metrics["successive_increases"] = float(self._up_count)
            assert self.successive_strips is not None
            if self._up_count >= self.successive_strips:
                self.stopping_reason = StoppingReason.SUCCESSIVE_INCREASES  # type: ignore[assignment]
                return (
                    f"Monitored metric {self.monitor} got worse at {self._up_count} successive ends of strips of {k}"
                    f" checks (UP_{self.successive_strips}). Signaling Trainer to stop."
                )
        return None

    # ------------------------------------------------------------------ best weights and restore

    @staticmethod
    def _averagers(trainer: pl.Trainer) -> list[WeightAveraging]:
        return [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]  # type: ignore[attr-defined]

    def _average_model(self, trainer: pl.Trainer) -> Any:
        """The one weight-averaging callback's ``AveragedModel`` (setup refuses several), or None."""
        averagers = self._averagers(trainer)
        return getattr(averagers[0], "_average_model", None) if len(averagers) == 1 else None

    def _monitor_is_validated(self, trainer: pl.Trainer) -> bool:
        """Whether ``monitor`` is logged by validation (so it describes the weights validation ran with, the averaged
        ones under weight averaging) rather than by training (the training weights)."""
        results = _validation_results(trainer)
        if results is None:
            return True
        return any(self.monitor in results._forked_name(metric, False) for metric in list(results.values()))

    def _capture_best(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, validated_fresh: bool
    ) -> None:
        """Copy the weights the monitored value describes: the module's; with a weight-averaging callback and a
        validation metric, the averaged weights validation ran with."""
        average = self._average_model(trainer) if self._averagers(trainer) else None
        source: nn.Module = pl_module
        if average is not None and self._monitor_is_validated(trainer):
            if validated_fresh and self._validated_copied and self._validated_weights is not None:
                # Copied at validation end because the average could move before this check: that copy becomes the
                # best, and the old best's buffers take the next one (nothing is copied twice).
                self._best_weights, self._validated_weights = self._validated_weights, self._best_weights
                self._validated_copied = False
                self._best_weights_epoch = epoch
                return
            moved = self._validated_version is not None and not torch.equal(
                self._validated_version.to(average.n_averaged.device), average.n_averaged
            )
            if (moved or not validated_fresh) and not self._warned_average_moved:
                self._warned_average_moved = True
                rank_zero_warn(
                    f"EarlyStopping(restore_best_weights=True): the best `{self.monitor}` at epoch {epoch} was"
                    " measured on averaged weights that the averaging callback updated before this check (or no"
                    " validation ran since the last check); the copy holds the current average (warned once).",
                    category=RuntimeWarning,
                )
            source = average.module
        if self._best_weights is None:
            self._best_weights = HostWeights()
        self._best_weights.capture(source)
        self._best_weights_epoch = epoch

    def _restore_from_host_copy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        copy = self._best_weights
        if not _distributed.all_ranks(trainer, copy is not None and not copy.empty):
            rank_zero_warn(
                f"EarlyStopping: no best weights of `{self.monitor}` were recorded; keeping the final weights."
            )
            return
        assert copy is not None
        copy.load_into(pl_module)
        # Weights are equal across DDP ranks by construction, but buffers (BatchNorm statistics) need not be.
        if isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1 and dist.is_initialized():
            with torch.no_grad():
                for tensor in self._distinct_tensors(pl_module):
                    dist.broadcast(tensor, src=0)
        self.restored_epoch = self._best_weights_epoch
        validated = self._averagers(trainer) and self._monitor_is_validated(trainer)
        averaged = " (the averaged weights validation ran with)" if validated else ""
        rank_zero_info(
            f"EarlyStopping: restored the weights of epoch {self.restored_epoch}{averaged}, the best `{self.monitor}`"
            f" = {self._best_value_text()}."
        )

    @staticmethod
    def _distinct_tensors(module: nn.Module) -> list[Tensor]:
        return list(itertools.chain(module.parameters(), module.buffers()))

    def _restore_into_averagers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the restored weights into every ``WeightAveraging`` callback's averaged model too: it copies its
        average into the module at train end (before or after this callback) and swaps it in for any later
        validation, and both must see the best weights."""
        for averager in self._averagers(trainer):
            average = getattr(averager, "_average_model", None)
            if average is None:
                continue
            # The pairing WeightAveraging itself uses (parameters, then buffers, in order).
            targets = self._distinct_tensors(average.module)
            sources = self._distinct_tensors(pl_module)
            with torch.no_grad():
                for target, source in zip(targets, sources, strict=True):
                    target.copy_(source)

    def _matching_checkpoint(self, trainer: pl.Trainer) -> ModelCheckpoint:
        found = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]  # type: ignore[attr-defined]
        for cb in found:
            if cb.monitor == self.monitor and cb.mode == self.mode and cb.save_top_k != 0:
                return cb
        have = (
            ", ".join(
                f"ModelCheckpoint(monitor={cb.monitor!r}, mode={cb.mode!r}, save_top_k={cb.save_top_k})" for cb in found
            )
            or "none"
        )
        raise MisconfigurationException(
            f"EarlyStopping(restore_best_weights='checkpoint') reloads the best file of a"
            f" `ModelCheckpoint(monitor={self.monitor!r}, mode={self.mode!r})` with save_top_k != 0, but the Trainer"
            f" has none (its ModelCheckpoint callbacks: {have}). Add one, or use restore_best_weights=True to keep a"
            " copy in host memory."
        )

    def _restore_from_checkpoint(self, trainer: pl.Trainer) -> None:
        checkpoint_cb = self._matching_checkpoint(trainer)
        path = _distributed.broadcast(trainer, checkpoint_cb.best_model_path)
        if not path:
            rank_zero_warn(
                f"EarlyStopping: the ModelCheckpoint on `{self.monitor}` saved no file; keeping the final weights."
            )
            return
        try:
            # Only tensors and plain Python types: a file in a shared directory must not run code when read.
            checkpoint = trainer.strategy.load_checkpoint(path, weights_only=True)
        except pickle.UnpicklingError as err:
            # torch names the offending global on the line "WeightsUnpickler error: Unsupported global: ...".
            lines = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
            detail = lines[0].split(". Please use")[0] if lines else type(err).__name__
            raise RuntimeError(
                f"EarlyStopping(restore_best_weights='checkpoint') refused to load {path}: it holds objects other than"
                f" tensors and plain Python types, and unpickling them could run code ({detail}). If you wrote that"
                " file and trust every type in it, allow them with torch.serialization.add_safe_globals([...]) before"
                " fit; restore_best_weights=True never reads a file."
            ) from err
        trainer.strategy.load_model_state_dict(checkpoint, strict=True)
        self.restored_epoch = int(checkpoint.get("epoch", -1))
        rank_zero_info(f"EarlyStopping: restored the weights of epoch {self.restored_epoch} from {path}.")
        if self.best_epoch >= 0 and self.restored_epoch != self.best_epoch:
            # ModelCheckpoint ranks the raw metric; start_from_epoch, min_delta, smoothing or a baseline can make
            # EarlyStopping's best a different epoch.
            rank_zero_warn(
                f"EarlyStopping(restore_best_weights='checkpoint') restored epoch {self.restored_epoch}, the"
                f" ModelCheckpoint's best by raw `{self.monitor}`, but EarlyStopping's best epoch is {self.best_epoch}"
                " (its start_from_epoch, min_delta, smoothing or baseline rank differently). Use"
                " restore_best_weights=True to restore exactly EarlyStopping's best.",
                category=RuntimeWarning,
            )

    # ------------------------------------------------------------------ logging

    def _tag(self, name: str) -> str:
        return f"early_stopping/{self.monitor}/{name}"

    def _log_check(self, trainer: pl.Trainer, stopped: bool) -> None:
        # Only inside a fit: a check run on a bare Trainer must not create the default logger's directory.
        if not trainer.loggers or not trainer.is_global_zero or not _fit_is_running(trainer):
            return
        scalars = {
            "best_score": float(self.best_score),
            "best_epoch": float(self.best_epoch),
            "wait_count": float(self.wait_count),
            "stopped": float(stopped),
            # No stopping_reason scalar (an enum value plots as a bare number): the reason is the text `.../reason`.
            **self._check_metrics,
        }
        _logging.log_scalars(trainer, {self._tag(k): v for k, v in scalars.items()})


# epochkit's arguments (the keyword-only ones) and their defaults, read from the signature so that they cannot drift
# apart: with all of them at these values the callback is Lightning's.
_EXTRA_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(EarlyStopping.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}
