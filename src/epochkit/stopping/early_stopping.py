"""``epochkit.EarlyStopping``: Lightning's ``EarlyStopping`` plus best-weight restore, warm-up, baseline, relative
``min_delta``, smoothing and Prechelt's criteria. The rules live in :mod:`epochkit.stopping.criteria`; this module is
the Lightning glue: read the metric, agree on it across ranks, apply the rules, tell the Trainer, log.
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from epochkit import _distributed, _logging
from epochkit.stopping import criteria
from epochkit.stopping.best_weights import HostWeights, host_copy_problem

log = logging.getLogger("epochkit.stopping")


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


def _reason_member(value: int) -> EarlyStoppingReason | StoppingReason:
    """Lightning's member for Lightning's values (drop-in), else epochkit's."""
    try:
        return EarlyStoppingReason(value)
    except ValueError:
        return StoppingReason(value)


# The epochkit arguments and their defaults: with all of them at these values the callback is Lightning's.
_EXTRA_DEFAULTS: dict[str, Any] = {
    "restore_best_weights": False,
    "start_from_epoch": 0,
    "baseline": None,
    "min_delta_mode": "abs",
    "smoothing": None,
    "smoothing_window": 5,
    "criterion": "patience",
    "alpha": None,
    "strip_length": 5,
    "successive_strips": None,
    "train_monitor": None,
}


class EarlyStopping(LightningEarlyStopping):
    r"""Lightning's ``EarlyStopping`` with what its users have asked for; a drop-in replacement.

    With only Lightning's arguments it decides exactly as Lightning's does, with the same ``state_key``,
    ``state_dict`` keys, ``stopping_reason`` values and messages; the one deliberate difference is the fix of the
    ``min_epochs`` latch (below). Every epochkit argument is keyword-only and off by default.

    Args:
        monitor, min_delta, patience, verbose, mode, strict, check_finite, stopping_threshold, divergence_threshold,
            check_on_train_epoch_end, log_rank_zero_only: As in Lightning's ``EarlyStopping``.
        restore_best_weights: ``True`` keeps a host-memory copy of the weights at the best check and loads it into the
            module when fit ends (stopped early or not), identical on every rank. ``"checkpoint"`` instead reloads
            the best file of a ``ModelCheckpoint`` that monitors the same metric in the same mode (a clear error at
            setup if there is none); it is the one that works with sharded models, where ``True`` fails at setup
            (``ModelParallelStrategy``, ``FSDPStrategy(use_orig_params=False)`` or ``FSDPStrategy`` sharding over
            several processes: see :func:`~epochkit.stopping.best_weights.host_copy_problem`). ``False``: keep the
            final weights.
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
        best_epoch: The epoch of the best check so far (-1 before the first).
        restored_epoch: The epoch whose weights were loaded at fit end (-1 if none).

    Raises:
        ValueError: At construction, for an argument out of range; the message names the argument, the value and
            what is allowed.
        MisconfigurationException: For an unknown ``mode`` (as Lightning), or at setup for ``"checkpoint"`` restore
            without a matching ``ModelCheckpoint``.
    """

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
        self._validate_arguments(min_delta)
        # Lightning's __init__ already made its own training state (wait_count, best_score, ...); ours is fresh
        # state of the same kind, kept beside it so that state_dict/load_state_dict see it before any setup.
        self._reset_extra_state()

    # ------------------------------------------------------------------ arguments

    def _validate_arguments(self, min_delta: float) -> None:
        def bad(name: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"EarlyStopping: `{name}={value!r}` is invalid; {allowed}.")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not isinstance(self.monitor, str) or not self.monitor:
            raise bad("monitor", self.monitor, "it must be the name of a logged metric")
        if not is_int(self.patience) or self.patience < 0:
            raise bad("patience", self.patience, "it must be an int >= 0 (checks without improvement)")
        if not isinstance(min_delta, int | float) or not min_delta >= 0 or not math.isfinite(min_delta):
            raise bad("min_delta", min_delta, "it must be a finite number >= 0")
        if self.min_delta_mode not in criteria.MIN_DELTA_MODES:
            raise bad("min_delta_mode", self.min_delta_mode, f"allowed: {list(criteria.MIN_DELTA_MODES)}")
        if self.restore_best_weights not in (True, False, "checkpoint") or (
            isinstance(self.restore_best_weights, int) and not isinstance(self.restore_best_weights, bool)
        ):
            raise bad("restore_best_weights", self.restore_best_weights, "allowed: True, False, 'checkpoint'")
        if not is_int(self.start_from_epoch) or self.start_from_epoch < 0:
            raise bad("start_from_epoch", self.start_from_epoch, "it must be an int >= 0")
        if self.baseline is not None and (
            not isinstance(self.baseline, int | float)
            or isinstance(self.baseline, bool)
            or not math.isfinite(self.baseline)
        ):
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
            if self.alpha is None or not isinstance(self.alpha, int | float) or not self.alpha > 0:
                raise bad("alpha", self.alpha, f"criterion={self.criterion!r} needs a number > 0")
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
            if (
                not isinstance(self.successive_strips, int)
                or isinstance(self.successive_strips, bool)
                or (self.successive_strips < 1)
            ):
                raise bad("successive_strips", self.successive_strips, "criterion='UP' needs an int >= 1")
        elif self.successive_strips is not None:
            raise bad("successive_strips", self.successive_strips, "it only applies to criterion='UP'; leave it None")

    @property
    def _extras_in_use(self) -> bool:
        return any(getattr(self, name) != default for name, default in _EXTRA_DEFAULTS.items())

    # ------------------------------------------------------------------ state

    def _reset_extra_state(self) -> None:
        self.best_epoch = -1
        self.restored_epoch = -1
        self._history: list[float] = []  # raw values, the last smoothing_window of them
        self._ema: float | None = None
        self._error_opt: float | None = None  # Prechelt's E_opt: the lowest (smoothed) value so far
        self._checks = 0  # counted checks (after start_from_epoch), for strips
        self._train_strip: list[float] = []
        self._last_strip_end: float | None = None
        self._up_count = 0
        self._baseline_beaten = False
        self._best_weights = HostWeights()
        self._best_weights_epoch = -1
        self._stats: dict[str, float] = {}
        self._warned_rank_disagreement = False

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if not self._extras_in_use:
            return state  # exactly Lightning's keys: checkpoints load into either class
        state.update(
            best_epoch=self.best_epoch,
            history=list(self._history),
            ema=self._ema,
            error_opt=self._error_opt,
            checks=self._checks,
            train_strip=list(self._train_strip),
            last_strip_end=self._last_strip_end,
            up_count=self._up_count,
            baseline_beaten=self._baseline_beaten,
        )
        if self.restore_best_weights is True and not self._best_weights.empty:
            # Copies, so a checkpoint written asynchronously never sees a later improvement.
            state["best_weights"] = {k: v.clone() for k, v in self._best_weights.state().items()}
            state["best_weights_epoch"] = self._best_weights_epoch
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning's loader only knows its own reasons and would reject epochkit's (values 5-8): hand it a neutral
        # value, then set the real member.
        super().load_state_dict({**state_dict, "stopping_reason": 0})
        self.stopping_reason = _reason_member(int(state_dict.get("stopping_reason", 0)))  # type: ignore[assignment]
        self.best_epoch = int(state_dict.get("best_epoch", -1))
        self._history = [float(v) for v in state_dict.get("history", [])]
        self._ema = state_dict.get("ema")
        self._error_opt = state_dict.get("error_opt")
        self._checks = int(state_dict.get("checks", 0))
        self._train_strip = [float(v) for v in state_dict.get("train_strip", [])]
        self._last_strip_end = state_dict.get("last_strip_end")
        self._up_count = int(state_dict.get("up_count", 0))
        self._baseline_beaten = bool(state_dict.get("baseline_beaten", False))
        self._best_weights = HostWeights()
        self._best_weights_epoch = int(state_dict.get("best_weights_epoch", -1))
        if state_dict.get("best_weights") is not None:
            self._best_weights.load_state(state_dict["best_weights"])

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.restore_best_weights == "checkpoint" and stage == "fit":
            self._matching_checkpoint(trainer)
        if self.restore_best_weights is True and stage == "fit":
            problem = host_copy_problem(trainer.strategy, trainer.world_size)
            if problem is not None:
                raise MisconfigurationException(
                    "EarlyStopping(restore_best_weights=True) keeps a host-memory copy of the LightningModule's"
                    f" state_dict, which cannot hold the weights here: {problem}. Use"
                    f" restore_best_weights='checkpoint' with a ModelCheckpoint(monitor={self.monitor!r},"
                    f" mode={self.mode!r}) (the strategy saves and reloads sharded weights), or"
                    " restore_best_weights=False."
                )
        if self.criterion == "PQ" and stage == "fit" and not self._check_on_train_epoch_end:
            # At validation end Lightning has not yet computed this epoch's training metrics: P_k would read a
            # missing or one-epoch-old training loss.
            raise MisconfigurationException(
                "EarlyStopping(criterion='PQ') needs this epoch's training loss, which exists only when the check"
                " runs at the end of the training epoch, but here it runs at validation end"
                f" (Trainer val_check_interval="
                f"{trainer.val_check_interval!r}, check_val_every_n_epoch={trainer.check_val_every_n_epoch!r})."
                " Validate once per epoch and leave check_on_train_epoch_end unset (or True)."
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights is True:
            self._restore_from_host_copy(trainer, pl_module)
        elif self.restore_best_weights == "checkpoint":
            self._restore_from_checkpoint(trainer)
        reason = self.stopping_reason
        if reason.value == 0:
            text = f"**NOT_STOPPED**: training ended after {trainer.current_epoch} epochs without an early stop."
        else:
            text = f"**{reason.name}** at epoch {self.stopped_epoch}: {self.stopping_reason_message}"
        if self.best_epoch >= 0:
            text += f"\n\nBest {self.monitor}: {float(self.best_score):.6g} at epoch {self.best_epoch}."
        if self.restored_epoch >= 0:
            text += f"\n\nRestored the weights of epoch {self.restored_epoch}."
        _logging.log_text(trainer, self._tag("reason"), text)
        if self.restored_epoch >= 0:
            _logging.log_scalars(trainer, {self._tag("restored_epoch"): float(self.restored_epoch)})

    # ------------------------------------------------------------------ the check

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        """Read the metric (agreed across ranks), apply the criteria, tell the Trainer, log."""
        if getattr(trainer, "fast_dev_run", False):  # disabled with fast_dev_run, as in Lightning
            return
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

        previous_reason = self.stopping_reason
        best_before = self.best_score
        should_stop, reason = self._evaluate_stopping_criteria(current, train_current)
        improved = self.best_score is not best_before
        if improved:
            self.best_epoch = epoch

        # stop every ddp process if any world process decides to stop
        should_stop = bool(trainer.strategy.reduce_boolean_decision(should_stop, all=False))
        if should_stop and not self._trainer_may_stop(trainer):
            # Lightning latches `trainer.should_stop` here and stops at min_epochs even if the metric recovers;
            # instead we do not signal, and the criteria decide again at the next check.
            should_stop = False
            self.stopping_reason = previous_reason
            reason = (
                f"{reason} Deferred: the Trainer's min_epochs={trainer.fit_loop.min_epochs} /"
                f" min_steps={trainer.fit_loop.min_steps} is not reached."
            )
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

        if improved and self.restore_best_weights is True:
            self._best_weights.capture(trainer.lightning_module)
            self._best_weights_epoch = epoch
        self._log_check(trainer, should_stop)

    def _trainer_may_stop(self, trainer: pl.Trainer) -> bool:
        """Whether the Trainer acts on a stop signalled now: its min_epochs / min_steps are met by this epoch's end."""
        min_epochs = trainer.fit_loop.min_epochs or 0
        min_steps = trainer.fit_loop.min_steps or 0
        return trainer.current_epoch + 1 >= min_epochs and trainer.global_step >= min_steps

    def _agreed_metric(self, trainer: pl.Trainer, logs: dict[str, Tensor], name: str) -> Tensor | None:
        """The metric's value, the same on every rank: the lowest rank that has it decides.

        Every rank enters the same collective whether or not it has the metric, so a metric missing on one rank
        cannot hang the others; with ``strict=True`` all ranks raise together.
        """
        value = logs.get(name)
        if value is not None:
            value = value.squeeze()  # as Lightning does: a shape-[1] metric is a scalar
        if trainer.world_size <= 1:
            if value is None:
                self._missing_metric(name, logs, missing_on=None)
            return value
        local = None if value is None else value.detach().to("cpu", copy=True)
        values = _distributed.gather_objects(trainer, local)
        missing = [rank for rank, v in enumerate(values) if v is None]
        present = [v for v in values if v is not None]
        if missing:
            self._missing_metric(name, logs, missing_on=missing if present else None)
            if not present or self.strict:
                return None
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
        return chosen

    def _missing_metric(self, name: str, logs: dict[str, Tensor], missing_on: list[int] | None) -> None:
        error_msg = (
            f"Early stopping conditioned on metric `{name}` which is not available."
            " Pass in or modify your `EarlyStopping` callback to use any of the following:"
            f" `{'`, `'.join(list(logs.keys()))}`"
        )
        if missing_on is not None:
            error_msg += f" (it is missing on rank(s) {missing_on} only)"
        if self.strict:
            raise RuntimeError(error_msg)
        if self.verbose > 0:
            rank_zero_warn(error_msg, category=RuntimeWarning)

    def _evaluate_stopping_criteria(
        self, current: Tensor, train_current: Tensor | None = None
    ) -> tuple[bool, str | None]:
        """Lightning's rules, then epochkit's; with epochkit's arguments at their defaults this is Lightning's code
        path, decision for decision and message for message."""
        self._stats = {}
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

        min_delta = abs(self.min_delta)
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
        prechelt = self._prechelt(float(value), None if train_current is None else float(train_current))
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
        self._stats["smoothed"] = value
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
            self._stats["generalization_loss"] = gl
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
                    self._stats.update(training_progress=progress, progress_quotient=pq)
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
            self._stats["successive_increases"] = float(self._up_count)
            assert self.successive_strips is not None
            if self._up_count >= self.successive_strips:
                self.stopping_reason = StoppingReason.SUCCESSIVE_INCREASES  # type: ignore[assignment]
                return (
                    f"Monitored metric {self.monitor} got worse at {self._up_count} successive ends of strips of {k}"
                    f" checks (UP_{self.successive_strips}). Signaling Trainer to stop."
                )
        return None

    # ------------------------------------------------------------------ restore

    def _restore_from_host_copy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _distributed.all_ranks(trainer, not self._best_weights.empty):
            rank_zero_warn(
                f"EarlyStopping: no best weights of `{self.monitor}` were recorded; keeping the final weights."
            )
            return
        self._best_weights.load_into(pl_module)
        # Weights are equal across DDP ranks by construction, but buffers (BatchNorm statistics) need not be.
        if isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1 and dist.is_initialized():
            with torch.no_grad():
                for tensor in pl_module.state_dict().values():
                    dist.broadcast(tensor, src=0)
        self.restored_epoch = self._best_weights_epoch
        if trainer.is_global_zero:
            log.info("EarlyStopping: restored the weights of epoch %d (best %s)", self.restored_epoch, self.monitor)

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
        checkpoint = trainer.strategy.load_checkpoint(path, weights_only=False)
        trainer.strategy.load_model_state_dict(checkpoint, strict=True)
        self.restored_epoch = int(checkpoint.get("epoch", -1))
        if trainer.is_global_zero:
            log.info("EarlyStopping: restored the weights of epoch %d from %s", self.restored_epoch, path)
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
        scalars = {
            "best_score": float(self.best_score),
            "best_epoch": float(self.best_epoch),
            "wait_count": float(self.wait_count),
            "stopped": float(stopped),
            "stopping_reason": float(self.stopping_reason.value),
            **self._stats,
        }
        _logging.log_scalars(trainer, {self._tag(k): v for k, v in scalars.items()})
