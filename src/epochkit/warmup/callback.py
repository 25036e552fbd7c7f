"""``LRWarmup``: warmup on top of whatever ``configure_optimizers`` returns, counted in applied optimizer steps."""

from __future__ import annotations

import functools
import logging
import math
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from epochkit._callback import cached_state_key
from epochkit._logging import current_step, log_scalars
from epochkit._state import REMEDY, CallbackStateError, Schema, check_state, int_list, list_of, remember_source
from epochkit._state import source as state_source
from epochkit._validation import check_bool, check_number, is_int, is_real
from epochkit.schedules import WarmupShape, check_warmup, warmup_factor

log = logging.getLogger("epochkit.warmup")

UNTUNED = "untuned"
_TABLE_BLOCK = 4096  # warmup factors computed per block of steps (LRWarmup._factor)

# What a checkpoint's LRWarmup state must hold (epochkit._state), checked when it is loaded.
_STATE_SCHEMA: Schema = {
    "steps_applied": (int_list(0), "a list of applied step counts (ints >= 0), one per optimizer"),
    "warmup_steps": (list_of(int_list(1)), "a list of warmup lengths (ints >= 1) per optimizer and param group"),
    "group_starts": (list_of(int_list(0)), "a list of start steps (ints >= 0) per optimizer and param group"),
}


def _has_grad(groups: list[dict[str, Any]]) -> bool:
    """Whether any parameter of ``groups`` has a gradient (plain loops: this runs at every optimizer step)."""
    for group in groups:
        for p in group["params"]:
            if p.grad is not None:
                return True
    return False


def _restore_floats(scaled: list[tuple[dict[str, Any], float, float]]) -> None:
    """Put back the float LRs ``LRWarmup._scale`` wrote, unless something set a new LR during the step."""
    for group, lr, written in scaled:
        current = group["lr"]
        if current is written or (not isinstance(current, torch.Tensor) and current == written):
            group["lr"] = lr


def _warmup_in(scheduler: Any) -> str | None:
    """What in ``scheduler`` ramps the LR up from (near) zero, described, or ``None``: an ``epochkit.schedules``
    factory or a Hugging Face ``get_*_with_warmup`` schedule (a ``LambdaLR`` of a ``functools.partial``), torch's
    ``LinearLR`` rising, timm's ``warmup_t``, and any of these inside ``SequentialLR`` / ``ChainedScheduler``."""
    for inner in getattr(scheduler, "_schedulers", None) or []:
        found = _warmup_in(inner)
        if found:
            return found
    if isinstance(scheduler, torch.optim.lr_scheduler.LinearLR):
        if scheduler.start_factor < scheduler.end_factor and scheduler.total_iters > 0:
            return f"LinearLR from start_factor={scheduler.start_factor} over {scheduler.total_iters} steps"
        return None
    for fn in getattr(scheduler, "lr_lambdas", None) or []:
        if not isinstance(fn, functools.partial):
            continue
        name = getattr(fn.func, "__name__", "?")
        ours = fn.keywords.get("warmup_steps") if fn.func.__module__ == "epochkit.schedules" else None
        if ours:
            return f"epochkit.schedules.{name.removesuffix('_factor')} with warmup_steps={ours}"
        theirs = fn.keywords.get("num_warmup_steps")
        if theirs:
            return f"{fn.func.__module__}.{name} with num_warmup_steps={theirs}"
    warmup_t = getattr(scheduler, "warmup_t", 0)  # timm's schedulers
    if is_real(warmup_t) and warmup_t > 0:
        return f"warmup_t={warmup_t}"
    return None


class LRWarmup(Callback):
    r"""Warm the learning rate up over the first optimizer steps, on top of the user's own schedule.

    For the optimizer's ``k``-th *applied* step (``k = 0, 1, ...``) each param group uses

    .. math:: \text{lr}_\text{used}(k) = \text{lr}_\text{schedule}(k)\cdot w(k),\qquad
              w(k) = f_0 + (1 - f_0)\, r\!\left(\min\!\left(1, \tfrac{k + 1}{W}\right)\right)

    where ``lr_schedule(k)`` is what ``param_group["lr"]`` holds at that step without this callback, ``f0`` is
    ``start_factor``, ``W`` the warmup length and ``r`` the ramp (``linear``: ``r(x) = x``; ``cosine``:
    ``r(x) = (1 - cos(pi x)) / 2``). So the first step is never at LR 0, ``w(W - 1) = 1`` exactly, and from step
    ``W`` on the callback does nothing at all.

    The scaling lives only around the update inside ``optimizer.step()``: with a closure (automatic optimization)
    it is applied after the closure (``training_step``, backward, ``on_before_optimizer_step``) has returned, and a
    post-hook restores the LR. So the user's scheduler, whatever it is (per-step, per-epoch, chainable ones that
    read ``param_group["lr"]``, ``OneCycleLR``, ``ReduceLROnPlateau``, one stepped inside ``training_step``, none),
    evolves exactly as without the callback. Steps are counted when the optimizer really applies an update:
    gradient accumulation counts once per optimizer step, and a skipped step (AMP's ``GradScaler`` found inf/NaN, a
    module's ``optimizer_step`` that does not call ``optimizer.step``, a ``training_step`` that returned ``None``)
    does not advance the warmup. Each optimizer (manual optimization included) has its own count; every param group
    is warmed up from its own LR, and a group added during warmup (an unfreeze) gets a full ramp of its own from
    the step it appears. A group added after the optimizer's warmup has ended is not warmed up.

    It warns at the start of training when the warmup cannot be what was meant: a ``steps``/``epochs`` warmup
    (``"untuned"`` included) longer than half of the fit's optimizer steps, or a scheduler that warms up by itself
    (an :mod:`epochkit.schedules` factory with ``warmup_steps > 0``, a Hugging Face ``get_*_with_warmup`` schedule,
    a rising ``LinearLR``, timm's ``warmup_t``), whose ramp this one would multiply.

    Give exactly one of ``steps``, ``epochs`` or ``fraction``.

    Args:
        steps: Warmup length in optimizer steps, or ``"untuned"`` for Ma & Yarats (2019)'s rule of thumb
            ``W = ceil(2 / (1 - beta2))`` read from each param group's Adam-family ``betas``.
        epochs: Warmup length in epochs (may be fractional), converted with the optimizer steps per epoch
            (``ceil(batches / accumulate_grad_batches)``; one step per batch under manual optimization).
        fraction: Warmup length as a fraction in (0, 1] of the run's optimizer steps
            (``trainer.estimated_stepping_batches``).
        shape: ``"linear"`` or ``"cosine"`` (half-cosine ramp).
        start_factor: ``f0`` in [0, 1): where the ramp starts from.
        log_lr: Log ``warmup/lr`` (the LR actually used) and ``warmup/factor`` while warmup lasts, at the steps
            Lightning logs at (``Trainer(log_every_n_steps=...)``) and, whatever that setting, at the warmup's first
            step, last step and the three quarter points between them, so that even a warmup shorter than
            ``log_every_n_steps`` draws its curve (five points more at most, host floats or tensors read once per
            epoch: no host synchronisation per step).

    Example:
        The first 10 optimizer steps of a fit warm up; the module's own LR is untouched afterwards:

        >>> import tempfile
        >>> from epochkit.demo import DigitsClassifier, DigitsDataModule
        >>> model, warmup = DigitsClassifier(lr=1e-3), LRWarmup(steps=10)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     trainer = pl.Trainer(max_epochs=1, limit_train_batches=24, limit_val_batches=0, logger=False,
        ...                          enable_checkpointing=False, enable_progress_bar=False,
        ...                          enable_model_summary=False, default_root_dir=root, callbacks=[warmup])
        ...     trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
        >>> warmup.steps_applied_, warmup.warmup_steps_, trainer.optimizers[0].param_groups[0]["lr"]
        ([10], [[10]], 0.001)
        >>> warmup = LRWarmup(steps=100, shape="cosine")
        >>> warmup.state_key
        "LRWarmup{'steps': 100, 'epochs': None, 'fraction': None, 'shape': 'cosine', 'start_factor': 0.0}"
    """

    # State of one fit (skorch's trailing underscore: public, learned), made by _reset_state.
    steps_applied_: list[int]
    warmup_steps_: list[list[int]]
    group_starts_: list[list[int]]
    _restored: dict[str, Any] | None
    _ends: list[int]
    _handles: dict[int, list[RemovableHandle]]
    _tables: dict[tuple[int, int], list[float]]
    _saved: dict[int, Any]  # per optimizer: a list of (group, LR, LR written), or a tuple (see _restore)
    _used: dict[int, tuple[float, list[Any]]]
    _finished: list[int]
    _pending_lrs: list[tuple[int, dict[str, torch.Tensor]]]
    _length: int | str

    def __init__(
        self,
        steps: int | Literal["untuned"] | None = None,
        epochs: float | None = None,
        fraction: float | None = None,
        shape: WarmupShape = "linear",
        start_factor: float = 0.0,
        log_lr: bool = True,
    ) -> None:
        given = [
            name for name, value in (("steps", steps), ("epochs", epochs), ("fraction", fraction)) if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "Give exactly one of `steps`, `epochs` or `fraction` to LRWarmup, "
                f"got {', '.join(f'`{n}`' for n in given) or 'none'}."
            )
        if steps is not None and steps != UNTUNED and (not is_int(steps) or int(steps) < 1):
            raise ValueError(f"`steps` must be an int >= 1 or 'untuned', got {steps!r}.")
        if epochs is not None:
            check_number("LRWarmup", "epochs", epochs, above=0.0)
        if fraction is not None:
            check_number("LRWarmup", "fraction", fraction, above=0.0, maximum=1.0)
        check_warmup(1, shape, start_factor)
        check_bool("LRWarmup", "log_lr", log_lr)
        self.steps = int(steps) if steps is not None and is_int(steps) else steps  # NumPy ints: the int's state_key
        self.epochs = epochs
        self.fraction = fraction
        self.shape = shape
        self.start_factor = start_factor
        self.log_lr = log_lr
        self._reset_state()

    @property
    @override
    def state_key(self) -> str:
        return cached_state_key(
            self,
            steps=self.steps,
            epochs=self.epochs,
            fraction=self.fraction,
            shape=self.shape,
            start_factor=self.start_factor,
        )

    # ------------------------------------------------------------------------------------------- lifecycle
    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.steps_applied_ = []
        self.warmup_steps_ = []
        self.group_starts_ = []
        self._restored = None
        self._ends = []
        self._handles = {}
        self._tables = {}
        self._saved = {}
        self._used = {}
        self._finished = []
        self._pending_lrs = []
        self._length = 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # validate/test/predict: keep what the last fit (or a checkpoint) left
            self._reset_state()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not at fit start: the train loader is set up by now, so reading the run's length loads nothing
        # (at fit start Lightning would load it early and say so), and no optimizer step has run yet.
        optimizers = trainer.optimizers
        if not any(opt.param_groups for opt in optimizers):  # none, or Lightning's stand-in for `None`
            log.warning("LRWarmup: the module configured no optimizer; there is nothing to warm up.")
            return
        self._length = self._resolve_length(trainer)
        self.warmup_steps_ = [
            [self._group_length(self._length, opt, i, j) for j in range(len(opt.param_groups))]
            for i, opt in enumerate(optimizers)
        ]
        restored = self._restored or {}
        steps = restored.get("steps_applied") or [0] * len(optimizers)
        if len(steps) != len(optimizers):
            raise CallbackStateError(
                f"LRWarmup: its state in {state_source(self)} has step counts for {len(steps)} optimizer(s), but "
                f"the module configured {len(optimizers)}; {REMEDY}."
            )
        self.steps_applied_ = list(steps)
        starts = restored.get("group_starts") or []
        self.group_starts_ = [
            list(starts[i]) if i < len(starts) and len(starts[i]) == len(opt.param_groups) else [0] * len(lengths)
            for i, (opt, lengths) in enumerate(zip(optimizers, self.warmup_steps_, strict=True))
        ]
        self._ends = [self._end(i) for i in range(len(optimizers))]
        for i, optimizer in enumerate(optimizers):
            if self.steps_applied_[i] < self._ends[i]:
                self._handles[i] = [
                    optimizer.register_step_pre_hook(partial(self._before_step, i)),
                    optimizer.register_step_post_hook(partial(self._after_step, i)),
                ]
        log.info("LRWarmup: warmup steps per optimizer and param group: %s", self.warmup_steps_)
        self._warn_misconfigured(trainer)

    def _warn_misconfigured(self, trainer: pl.Trainer) -> None:
        """Say so when the warmup cannot be what was meant: longer than most of the fit, or on top of a scheduler
        that warms up itself."""
        total = trainer.estimated_stepping_batches
        longest = max((max(lengths) for lengths in self.warmup_steps_ if lengths), default=0)
        # `fraction=` is relative to the run by construction: whatever it gives was asked for.
        if self.fraction is None and math.isfinite(total) and total > 0 and longest > total / 2:
            total = int(total)
            rule = ""
            if self.steps == UNTUNED:
                rule = " (steps='untuned': 2 / (1 - beta2) for Adam-family betas, 2000 for beta2 = 0.999)"
            if longest > total:
                how = (
                    f"longer than this fit's {total} (trainer.estimated_stepping_batches): the LR never reaches its "
                    f"peak, and the last step uses {self._factor(total - 1, longest):.2%} of it"
                )
            elif longest == total:
                how = (
                    "as long as this fit (trainer.estimated_stepping_batches): the LR reaches its peak on the last "
                    "step only"
                )
            else:
                how = f"{longest / total:.0%} of this fit's {total} (trainer.estimated_stepping_batches)"
            rank_zero_warn(
                f"LRWarmup: the warmup lasts {longest} optimizer steps{rule}, {how}. A warmup usually takes a few "
                "percent of a run: give a shorter one (`steps=`, `epochs=` or `fraction=`), or check max_epochs / "
                "max_steps."
            )
        for config in trainer.lr_scheduler_configs:
            found = _warmup_in(config.scheduler)
            if found:
                rank_zero_warn(
                    f"LRWarmup: the LR scheduler {type(config.scheduler).__name__} already warms up ({found}); "
                    "LRWarmup multiplies its own ramp on top, so the first steps run at the product of two ramps "
                    "(warmup twice). Keep one: give the schedule no warmup (warmup_steps=0), or remove LRWarmup."
                )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Past its warmup an optimizer loses the hooks (not inside them: torch iterates the hook dict then).
        while self._finished:
            for handle in self._handles.pop(self._finished.pop(), []):
                handle.remove()
        if not self._used:
            return
        used, self._used = self._used, {}
        if not (self.log_lr and trainer.loggers):
            return
        lightning_logs = trainer._logger_connector.should_update_logs
        metrics: dict[str, float] = {}
        deferred: dict[str, torch.Tensor] = {}
        for i, (factor, lrs) in used.items():
            if not (lightning_logs or self._drawn_step(i)):
                continue
            prefix = "warmup" if i == 0 else f"warmup/opt{i}"
            metrics[f"{prefix}/factor"] = factor
            for j, lr in enumerate(lrs):
                tag = f"{prefix}/lr" if j == 0 else f"{prefix}/lr/pg{j}"
                if lr.__class__ is tuple:  # (group, LR, LR written): a float LR (see _scale)
                    lr = lr[2]
                if isinstance(lr, torch.Tensor):
                    deferred[tag] = lr  # read on the host once per epoch (float() here would sync with the device)
                else:
                    metrics[tag] = float(lr)
        log_scalars(trainer, metrics)
        if deferred:
            self._pending_lrs.append((current_step(trainer), deferred))

    def _drawn_step(self, i: int) -> bool:
        """Whether optimizer ``i``'s step just applied is one of the warmup's five points logged whatever
        ``log_every_n_steps``: its first and last step and the quarter points between them."""
        k, last = self.steps_applied_[i] - 1, self._ends[i] - 1
        return any(k == (q * last) // 4 for q in range(5))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_tensor_lrs(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_tensor_lrs(trainer)

    def _log_tensor_lrs(self, trainer: pl.Trainer) -> None:
        """Log the tensor LRs kept since the last call at the steps they were used, with one host transfer."""
        pending, self._pending_lrs = self._pending_lrs, []
        if not pending or not trainer.is_global_zero:
            return
        flat = [lr for _, tensors in pending for lr in tensors.values()]
        values = iter(torch.stack([lr.to(flat[0].device, torch.float64) for lr in flat]).cpu().tolist())
        for step, tensors in pending:
            log_scalars(trainer, {tag: next(values) for tag in tensors}, step=step)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release(trainer)

    def _release(self, trainer: pl.Trainer) -> None:
        """Remove the hooks, and undo a scaling whose step raised before the post-hook could restore it."""
        for i, saved in self._saved.items():
            self._restore(trainer.optimizers[i], saved)
        self._saved = {}
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles = {}

    # ------------------------------------------------------------------------------------------- the hooks
    def _before_step(self, i: int, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        """Scale the LRs for this step; with a closure, only once it has returned (see ``_scaled_closure``)."""
        # torch hands step pre-hooks the step's own arguments, the optimizer first: (optimizer, closure?, ...).
        closure = kwargs.get("closure") if "closure" in kwargs else (args[1] if len(args) > 1 else None)
        if closure is None:  # no user code runs inside this step (GradScaler.step, a bare optimizer.step())
            self._scale(i, optimizer)
            return None
        wrapped = partial(self._scaled_closure, i, optimizer, closure)
        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _scaled_closure(self, i: int, optimizer: torch.optim.Optimizer, closure: Any) -> Any:
        # The closure is the user's training_step, backward and on_before_optimizer_step: it must see (and may
        # change) the schedule's own LR. Scale after it, once (LBFGS evaluates it again). When it left no gradient
        # (a training_step that returned None: Lightning zeroes grads to None and skips backward) _scale does
        # nothing and the step does not count.
        loss = closure()
        if i not in self._saved:
            self._scale(i, optimizer)
        return loss

    def _scale(self, i: int, optimizer: torch.optim.Optimizer) -> None:
        # Runs at every optimizer step: plain loops and local names (this is the per-step cost, target <= 2 us).
        groups = optimizer.param_groups
        if not _has_grad(groups):
            return  # nothing to apply: the step is a no-op and does not count (a Python check, no device sync)
        k = self.steps_applied_[i]
        lengths, starts = self.warmup_steps_[i], self.group_starts_[i]
        if len(lengths) < len(groups):
            self._add_groups(i, optimizer)
        # One loop, index lookups (not zip(..., strict=...): its keyword alone costs about 0.4 us a call).
        factor_of = self._factor
        # The usual case first: every LR a Python float. Each group keeps (group, LR, LR written); the post-hook
        # puts the LR back from that list (a list: see _after_step) and the batch-end hook reads the written LRs
        # from it, so no second list is built per step.
        scaled: list[tuple[dict[str, Any], float, float]] = []
        factor = 1.0
        for j, group in enumerate(groups):
            lr = group["lr"]
            if lr.__class__ is not float:
                break
            w = factor_of(k - starts[j], lengths[j])
            group["lr"] = written = lr * w
            scaled.append((group, lr, written))
            if j == 0:
                factor = w
        else:
            self._saved[i] = scaled
            self._used[i] = (factor, scaled)
            return
        _restore_floats(scaled)  # a tensor (or int) LR: undo, and take the general path
        saved: list[tuple[Any, Any]] = []
        used: list[Any] = []
        first_of: dict[int, int] | None = None
        for j, group in enumerate(groups):
            w = factor_of(k - starts[j], lengths[j])
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                if first_of is None:
                    try:
                        first_of = self._shared_lr_tensors(i, groups, k, starts, lengths)
                    except ValueError:
                        self._restore(optimizer, tuple(saved))  # nothing stays scaled
                        raise
                # Tensor LRs (capturable/fused optimizers) are scaled in place, on device, with no host sync.
                if first_of[id(lr)] == j:
                    saved.append((lr.clone(), None))
                    lr.mul_(w)
                else:
                    saved.append((None, None))  # already scaled (and restored) through an earlier group
                used.append(lr.detach().clone())
            else:
                group["lr"] = written = lr * w
                saved.append((lr, written))
                used.append(written)
            if j == 0:
                factor = w
        self._saved[i] = tuple(saved)  # a tuple: the general form (see _after_step)
        self._used[i] = (factor, used)

    def _shared_lr_tensors(
        self, i: int, groups: list[dict[str, Any]], k: int, starts: list[int], lengths: list[int]
    ) -> dict[int, int]:
        """The first group of each LR tensor. Groups that inherit a tensor LR from the optimizer's defaults share one
        tensor: it is scaled once, and only when they need the same factor (checked before any is scaled)."""
        factors = [self._factor(k - starts[j], lengths[j]) for j in range(len(groups))]
        first_of: dict[int, int] = {}
        for j, group in enumerate(groups):
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                first = first_of.setdefault(id(lr), j)
                if factors[first] != factors[j]:
                    raise ValueError(
                        f"LRWarmup: param groups {first} and {j} of optimizer {i} share one LR tensor but need "
                        f"different warmup factors at this step ({factors[first]} and {factors[j]}: a group added "
                        "during warmup, or different betas with steps='untuned'). Give each param group its own LR "
                        "tensor, e.g. {'params': ..., 'lr': torch.tensor(0.001)}."
                    )
        return first_of

    def _after_step(self, i: int, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        saved = self._saved.pop(i, None)
        if saved is None:
            return  # nothing was scaled: a skipped batch, not an applied warmup step
        if saved.__class__ is list:  # float LRs only (_scale's usual case)
            _restore_floats(saved)
        else:
            self._restore(optimizer, saved)
        self.steps_applied_[i] += 1
        if self.steps_applied_[i] >= self._ends[i]:
            self._finished.append(i)

    @staticmethod
    def _restore(optimizer: torch.optim.Optimizer, saved: Any) -> None:
        """Put back the LRs ``_scale`` saved: a list of (group, LR, LR written) for float LRs, else a tuple of
        (LR or its copy, LR written) per group."""
        if saved.__class__ is list:
            _restore_floats(saved)
            return
        groups = optimizer.param_groups
        for j in range(min(len(groups), len(saved))):  # not zip(..., strict=False): see _scale
            group, (lr, written) = groups[j], saved[j]
            if isinstance(group["lr"], torch.Tensor):
                if lr is not None:
                    group["lr"].copy_(lr)
            elif group["lr"] == written:  # something else set a new LR during the step: keep it
                group["lr"] = lr

    def _add_groups(self, i: int, optimizer: torch.optim.Optimizer) -> None:
        """Param groups added during warmup (e.g. unfreezing) get a warmup of their own from this step on."""
        lengths, starts = self.warmup_steps_[i], self.group_starts_[i]
        for j in range(len(lengths), len(optimizer.param_groups)):
            lengths.append(self._group_length(self._length, optimizer, i, j))
            starts.append(self.steps_applied_[i])
        self._ends[i] = self._end(i)

    def _end(self, i: int) -> int:
        """The optimizer's step count at which every one of its param groups has finished warming up."""
        pairs = zip(self.group_starts_[i], self.warmup_steps_[i], strict=True)
        return max((start + length for start, length in pairs), default=0)

    def _factor(self, k: int, length: int) -> float:
        if k >= length:
            return 1.0
        # One vectorised evaluation per block of _TABLE_BLOCK steps of a warmup length; the per-step hook is then a
        # list lookup. Blocks, not the whole ramp: memory follows the steps the fit takes, not the warmup's length.
        key = (length, k // _TABLE_BLOCK)
        table = self._tables.get(key)
        if table is None:
            first = key[1] * _TABLE_BLOCK
            steps = np.arange(first, min(length, first + _TABLE_BLOCK))
            table = np.asarray(warmup_factor(steps, length, self.shape, self.start_factor)).tolist()
            self._tables[key] = table
        return table[k - key[1] * _TABLE_BLOCK]

    # -------------------------------------------------------------------------------------- warmup length
    def _resolve_length(self, trainer: pl.Trainer) -> int | str:
        if self.steps is not None:
            return self.steps
        total = trainer.estimated_stepping_batches
        if self.fraction is not None:
            if not math.isfinite(total):
                raise ValueError(
                    f"LRWarmup(fraction={self.fraction}) needs the run's length, but "
                    "trainer.estimated_stepping_batches is inf: set Trainer(max_steps=...) or max_epochs with a "
                    "sized train loader, or give `steps=` instead."
                )
            return max(1, round(self.fraction * total))
        assert self.epochs is not None
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError(
                f"LRWarmup(epochs={self.epochs}) needs the number of batches per epoch, but the train loader has no "
                "length (an IterableDataset?): give `steps=` instead."
            )
        per_epoch = (
            batches
            if not trainer.lightning_module.automatic_optimization
            else math.ceil(batches / trainer.accumulate_grad_batches)
        )
        return max(1, round(self.epochs * per_epoch))

    @staticmethod
    def _group_length(length: int | str, optimizer: torch.optim.Optimizer, i: int, j: int) -> int:
        if length != UNTUNED:
            assert isinstance(length, int)
            return length
        betas = optimizer.param_groups[j].get("betas")
        if betas is None or len(betas) < 2:
            raise ValueError(
                f"LRWarmup(steps='untuned') reads beta2 from Adam-family optimizers, but param group {j} of "
                f"optimizer {i} ({type(optimizer).__name__}) has no `betas`: give `steps=` instead."
            )
        beta2 = float(betas[1])
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"LRWarmup(steps='untuned') needs beta2 in [0, 1), got {beta2} in param group {j}.")
        # Ma & Yarats (2019): linear warmup over 2 / (1 - beta2) steps.
        return math.ceil(2.0 / (1.0 - beta2) - 1e-9)

    # ---------------------------------------------------------------------------------------- checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_applied": list(self.steps_applied_),
            "warmup_steps": [list(x) for x in self.warmup_steps_],
            "group_starts": [list(x) for x in self.group_starts_],
        }

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        remember_source(self, trainer)
        states = checkpoint.get("callbacks") or {}
        others = [key for key in states if str(key).startswith("LRWarmup{") and key != self.state_key]
        if others and self.state_key not in states:
            # Lightning finds no state under this key and says only that; the ramp would restart unexplained.
            rank_zero_warn(
                f"LRWarmup: {state_source(self)} holds the state of {others[0]}, not of {self.state_key}: the "
                "warmup settings changed since it was written, so this warmup starts again from its first step at "
                "the resumed step (the learning rate drops and ramps up again). Resume with the settings the "
                "checkpoint was written with to continue its warmup."
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at on_train_start, once the optimizers exist; also readable right away.
        check_state(self, state_dict, _STATE_SCHEMA)
        self._restored = dict(state_dict)
        self.steps_applied_ = list(state_dict.get("steps_applied", []))
        self.warmup_steps_ = [list(x) for x in state_dict.get("warmup_steps", [])]
        self.group_starts_ = [list(x) for x in state_dict.get("group_starts", [])]
