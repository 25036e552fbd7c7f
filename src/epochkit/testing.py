"""What users call in their own tests: :func:`resume_drill`, which checks that a fit killed mid-epoch and resumed from
its checkpoint trains exactly what the uninterrupted fit trains.

Lightning restores the model, the optimizers, the schedulers, the loops, every callback's ``state_dict`` and a
``StatefulDataLoader``'s position; whatever else a fit depends on (a callback without ``state_dict``, a sampler's
generator, a loader that restarts its epoch) is silently lost. The drill runs the fit twice from the same seed, once
uninterrupted and once interrupted right after a checkpoint at ``kill_at_step`` and resumed from it, and compares, step
by step, the data each step consumed (a content fingerprint of every batch) and the learning rate each optimizer step
used, then at the end every callback's state, the weights, the order digests of ``ShuffleAudit`` when attached, and
the global RNG states.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import pickle
import random
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from typing_extensions import override

from epochkit._io import save_torch_atomic
from epochkit._validation import check_choice, check_int
from epochkit.audit.recording import fingerprint

__all__ = ["DrillInterrupt", "ResumeReport", "StepTrace", "resume_drill"]

#: Trainer settings the drill uses unless ``trainer_kwargs`` says otherwise: quiet, on the CPU, no logger.
_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "deterministic": True,
}


class DrillInterrupt(RuntimeError):
    """Raised by the drill to interrupt a fit right after its checkpoint (a stand-in for a killed process)."""


@dataclass
class StepTrace:
    """What one fit trained on, step by step (recorded by the drill's probe).

    Attributes:
        steps: ``(epoch, batch_idx)`` of every training batch, in order.
        data: A 64-bit digest of every batch's content (the exact bits of each per-sample tensor), in order.
        lrs: The learning rate of every param group at every optimizer step, in order.
        callbacks: Every callback's ``state_dict`` at the end of the fit, by ``state_key`` (checkpoint callbacks and the
            drill's own are left out).
        digests: ``ShuffleAudit``'s order digest per epoch and loader (``{epoch: {loader: merged}}``), when attached.
        rng: The global RNG states at the end of the fit (torch, numpy, python).
        weights: The model's final ``state_dict``, on the CPU.
    """

    steps: list[tuple[int, int]] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    lrs: list[tuple[float, ...]] = field(default_factory=list)
    callbacks: dict[str, Any] = field(default_factory=dict)
    digests: dict[int, dict[str, str]] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


class _Probe(Callback):
    """Records a :class:`StepTrace`; it only reads (one host copy of each batch's fingerprint: a test tool)."""

    def __init__(self) -> None:
        self.trace = StepTrace()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ids = fingerprint(batch).cpu().numpy()
        self.trace.steps.append((trainer.current_epoch, batch_idx))
        self.trace.data.append(_digest(ids))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.trace.lrs.append(tuple(float(group["lr"]) for group in optimizer.param_groups))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from epochkit.audit.callback import ShuffleAudit

        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, _Probe | Checkpoint):
                continue
            if isinstance(callback, ShuffleAudit):
                for verdict in callback.verdicts_:
                    if verdict.epoch is not None:
                        merged = {name: str(d.get("merged", "")) for name, d in verdict.digests.items()}
                        self.trace.digests[int(verdict.epoch)] = merged
                continue
            self.trace.callbacks[callback.state_key] = _copy(callback.state_dict())
        self.trace.rng = {
            "torch": torch.get_rng_state().clone(),
            "numpy": np.asarray(np.random.get_state(legacy=False)["state"]["key"]).copy(),
            "python": list(random.getstate()[1]),
        }
        self.trace.weights = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}


@dataclass
class _Job:
    """One drill's fit, picklable (for the child process of ``kill="sigkill"``)."""

    make_model: Callable[[], pl.LightningModule]
    make_data: Callable[[], Any]
    make_callbacks: Callable[[], Sequence[Callback]] | None
    settings: dict[str, Any]
    seed: int
    root: Path

    def fit(
        self, name: str, extra: list[Callback], ckpt_path: Path | None = None, probe: _Probe | None = None
    ) -> StepTrace:
        """A fit as a fresh process starts one: seeded, with a new model, data, callbacks and Trainer."""
        pl.seed_everything(self.seed, verbose=False)
        model, data = self.make_model(), self.make_data()
        probe = probe or _Probe()
        callbacks = [*(self.make_callbacks() if self.make_callbacks else []), probe, *extra]
        trainer = pl.Trainer(**{**self.settings, "default_root_dir": str(self.root / name), "callbacks": callbacks})
        kwargs: dict[str, Any] = {"datamodule": data} if isinstance(data, pl.LightningDataModule) else {}
        if not kwargs:
            kwargs["train_dataloaders"] = data
        trainer.fit(model, ckpt_path=str(ckpt_path) if ckpt_path is not None else None, **kwargs)
        return probe.trace


def _killed_child(job: _Job, step: int, checkpoint: Path) -> None:
    """The child of ``kill="sigkill"``: the fit, killed by ``SIGKILL`` right after its checkpoint at ``step``."""
    torch.set_num_threads(1)
    job.fit("interrupted", [_KillAfterCheckpoint(step, checkpoint, sigkill=True)])


def _fit_killed(job: _Job, step: int, checkpoint: Path) -> StepTrace:
    """Run the interrupted fit in a child process that SIGKILLs itself; its trace up to the kill comes back in a file
    written (atomically) just before the kill."""
    process = multiprocessing.get_context("spawn").Process(target=_killed_child, args=(job, step, checkpoint))
    process.start()
    process.join()
    if process.exitcode != -signal.SIGKILL:
        raise RuntimeError(
            f"resume_drill(kill='sigkill'): the child fit ended with exit code {process.exitcode}, not killed at "
            f"global step {step} (see its output above)"
        )
    saved = torch.load(_trace_path(checkpoint), weights_only=True)
    return StepTrace(
        steps=[tuple(s) for s in saved["steps"]], data=list(saved["data"]), lrs=[tuple(x) for x in saved["lrs"]]
    )


def _trace_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".trace.pt")


class _KillAfterCheckpoint(Callback):
    """Saves a checkpoint after the batch that reaches global step ``step``, then raises :class:`DrillInterrupt`.
    The last callback of the fit (before any ``ModelCheckpoint``, which Lightning moves to the end), so that the
    checkpoint holds what a ``ModelCheckpoint(every_n_train_steps=...)`` one would of every other callback."""

    def __init__(self, step: int, path: Path, sigkill: bool = False) -> None:
        self.step = step
        self.path = path
        self.sigkill = sigkill

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            if self.sigkill:
                probe = next(c for c in trainer.callbacks if isinstance(c, _Probe))  # type: ignore[attr-defined]
                trace = probe.trace
                save_torch_atomic({"steps": trace.steps, "data": trace.data, "lrs": trace.lrs}, _trace_path(self.path))
                os.kill(os.getpid(), signal.SIGKILL)
            raise DrillInterrupt(f"interrupted by the resume drill at global step {self.step}")


@dataclass
class ResumeReport:
    """What :func:`resume_drill` found.

    Attributes:
        exact: Whether the resumed fit trained exactly what the uninterrupted one did: the same data at every step, the
            same learning rates, the same callback states, order digests and final weights (and the same RNG states
            when the drill ran with ``strict=True``).
        differences: Every difference found, in the order checked (data, learning rate, callback states, order
            digests, weights, RNG); the first one is the one to fix first.
        notes: What differs but does not count against ``exact`` (the RNG states unless ``strict``).
        kill_at_step: The global step after which the fit was interrupted.
        steps: Training batches compared.
        uninterrupted: The uninterrupted fit's trace.
        resumed: The interrupted fit's trace up to the interruption, then the resumed fit's.
    """

    exact: bool
    differences: list[str]
    notes: list[str]
    kill_at_step: int
    steps: int
    uninterrupted: StepTrace
    resumed: StepTrace

    def __str__(self) -> str:
        head = f"resume drill (interrupted after global step {self.kill_at_step}, {self.steps} training batches)"
        if self.exact:
            lines = [f"{head}: exact; the resumed fit trained what the uninterrupted one did"]
        else:
            lines = [f"{head}: NOT exact", f"first difference: {self.differences[0]}"]
            lines += [f"also: {d}" for d in self.differences[1:]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def resume_drill(
    make_model: Callable[[], pl.LightningModule],
    make_data: Callable[[], Any],
    kill_at_step: int,
    trainer_kwargs: dict[str, Any] | None = None,
    make_callbacks: Callable[[], Sequence[Callback]] | None = None,
    seed: int = 0,
    strict: bool = False,
    root: str | Path | None = None,
    kill: Literal["raise", "sigkill"] = "raise",
) -> ResumeReport:
    """Run a fit uninterrupted, then interrupted after ``kill_at_step`` and resumed from its checkpoint, and compare.

    Each fit starts as a fresh process would: ``seed_everything(seed)``, then a new model, data module, callbacks and
    Trainer. The interruption is a :class:`DrillInterrupt` raised right after a checkpoint saved at the end of the
    batch that reaches global step ``kill_at_step`` (a mid-epoch step to drill the hard case); the resumed fit passes
    that file as ``ckpt_path``.

    Args:
        make_model: Builds the LightningModule.
        make_data: Builds a LightningDataModule, or the train DataLoader.
        kill_at_step: The global step to interrupt after (at least 1, before the fit ends).
        trainer_kwargs: Trainer arguments (``max_epochs`` ...); the drill's defaults are quiet, CPU, no logger,
            ``deterministic=True``. ``callbacks`` and ``default_root_dir`` are the drill's.
        make_callbacks: Builds the fit's callbacks (called once per fit, so each fit gets fresh ones).
        seed: The seed of every fit.
        strict: Count different global RNG states at the end against ``exact`` (Lightning's checkpoints do not hold
            the RNG: a fit that draws from it after the resume, e.g. dropout or a ``RandomSampler`` without a
            generator, then differs).
        root: Where the checkpoint goes (a temporary directory by default, removed afterwards).
        kill: ``"raise"``: interrupt the fit with :class:`DrillInterrupt`, in this process. ``"sigkill"``: run the
            interrupted fit in a child process (``spawn``) that kills itself with ``SIGKILL`` right after the
            checkpoint, as a preempted job dies; ``make_model``, ``make_data`` and ``make_callbacks`` must then be
            picklable (module-level functions or classes, ``functools.partial`` of them).

    Returns:
        A :class:`ResumeReport`; ``str(report)`` names the first difference.

    Raises:
        ValueError: If ``kill_at_step`` is not a positive int, or the fit ends before reaching it.
    """
    check_int("resume_drill", "kill_at_step", kill_at_step, minimum=1)
    check_choice("resume_drill", "kill", kill, ("raise", "sigkill"))
    if kill == "sigkill":
        try:
            pickle.dumps((make_model, make_data, make_callbacks, trainer_kwargs))
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise TypeError(
                "resume_drill(kill='sigkill'): make_model, make_data, make_callbacks and trainer_kwargs must be "
                f"picklable to run in a child process (module-level functions or classes); got {error}"
            ) from error
    if root is None:
        with tempfile.TemporaryDirectory() as tmp:
            return resume_drill(
                make_model, make_data, kill_at_step, trainer_kwargs, make_callbacks, seed, strict, Path(tmp), kill
            )
    root = Path(root)
    job = _Job(make_model, make_data, make_callbacks, {**_DEFAULTS, **(trainer_kwargs or {})}, seed, root)
    fit = job.fit

    baseline = fit("uninterrupted", [])
    if len(baseline.lrs) <= kill_at_step:
        raise ValueError(
            f"resume_drill(kill_at_step={kill_at_step}): must be below the fit's {len(baseline.lrs)} optimizer steps, "
            "so that the fit is interrupted before it ends."
        )
    checkpoint = root / "drill.ckpt"
    if kill == "sigkill":
        first = _fit_killed(job, kill_at_step, checkpoint)
    else:
        interrupted = _Probe()
        with contextlib.suppress(DrillInterrupt):
            fit("interrupted", [_KillAfterCheckpoint(kill_at_step, checkpoint)], probe=interrupted)
        first = interrupted.trace
    if not checkpoint.exists():  # pragma: no cover - the step count above rules it out
        raise RuntimeError(f"resume_drill: the fit ended before global step {kill_at_step}")
    resumed = fit("resumed", [], checkpoint)
    done = len(first.steps)  # the batches trained before the interruption
    combined = StepTrace(
        steps=first.steps[:done] + resumed.steps,
        data=first.data[:done] + resumed.data,
        lrs=first.lrs + resumed.lrs,
        callbacks=resumed.callbacks,
        digests=resumed.digests,
        rng=resumed.rng,
        weights=resumed.weights,
    )
    differences, notes = _compare(baseline, combined, kill_at_step)
    rng = _rng_difference(baseline.rng, combined.rng)
    if rng is not None:
        (differences if strict else notes).append(rng)
    return ResumeReport(
        exact=not differences,
        differences=differences,
        notes=notes,
        kill_at_step=kill_at_step,
        steps=len(baseline.steps),
        uninterrupted=baseline,
        resumed=combined,
    )


def _compare(a: StepTrace, b: StepTrace, kill_at_step: int) -> tuple[list[str], list[str]]:
    """Differences between the uninterrupted trace ``a`` and the resumed one ``b``, in the order of the report."""
    out: list[str] = []
    notes: list[str] = []
    first = next((i for i, (x, y) in enumerate(zip(a.data, b.data, strict=False)) if x != y), None)
    if first is not None:
        epoch, batch = a.steps[first]
        after = "after the resume" if first >= kill_at_step else "before the interruption"
        differing = sum(x != y for x, y in zip(a.data, b.data, strict=False))
        where = f"step {first + 1} (epoch {epoch}, batch {batch}), {after}"
        out.append(f"consumed data: the batch at {where} differs ({differing} of {len(a.data)} batches differ)")
    elif len(a.data) != len(b.data):
        out.append(f"consumed data: {len(b.data)} training batches after the resume, {len(a.data)} without it")
    lr = next((i for i, (x, y) in enumerate(zip(a.lrs, b.lrs, strict=False)) if x != y), None)
    if lr is not None:
        out.append(f"learning rate: optimizer step {lr + 1} used {b.lrs[lr]} after the resume, {a.lrs[lr]} without it")
    elif len(a.lrs) != len(b.lrs):
        out.append(f"learning rate: {len(b.lrs)} optimizer steps after the resume, {len(a.lrs)} without it")
    for key in sorted(set(a.callbacks) | set(b.callbacks)):
        path = _first_mismatch(a.callbacks.get(key), b.callbacks.get(key))
        if path is not None:
            out.append(f"callback state: {key}{path} differs at the end of the fit")
    for epoch in sorted(set(a.digests) & set(b.digests)):
        if a.digests[epoch] != b.digests[epoch]:
            out.append(f"ShuffleAudit order digest: epoch {epoch} differs ({b.digests[epoch]} vs {a.digests[epoch]})")
            break
    names = [k for k in a.weights if k not in b.weights or not torch.equal(a.weights[k], b.weights[k])]
    if names:
        worst = max(
            (float((a.weights[k].double() - b.weights[k].double()).abs().max()) for k in names if k in b.weights),
            default=float("nan"),
        )
        out.append(
            f"final weights: {len(names)} of {len(a.weights)} tensors differ ({names[0]}, ...; max |diff| {worst:.3g})"
        )
    if not out and len(a.steps) != len(b.steps):
        notes.append(f"{len(b.steps)} batches after the resume, {len(a.steps)} without it")
    return out, notes


def _rng_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    differing = [
        name
        for name in ("torch", "numpy", "python")
        if name in a and name in b and not np.array_equal(np.asarray(a[name]), np.asarray(b[name]))
    ]
    if not differing:
        return None
    return (
        f"global RNG state at the end of the fit: {', '.join(differing)} differ (Lightning's checkpoint does not hold "
        "the RNG; whatever draws from it after the resume draws other numbers)"
    )


def _first_mismatch(a: Any, b: Any, path: str = "") -> str | None:
    """The first key path where two nested states differ (``""`` for the top level), None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{path}[{key!r}]"
            found = _first_mismatch(a[key], b[key], f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return path or " (length)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_mismatch(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return None if a.shape == b.shape and torch.equal(a, b) else path or " (tensor)"
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return None if np.array_equal(np.asarray(a), np.asarray(b)) else path or " (array)"
    try:
        same = bool(a == b) or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    except (TypeError, ValueError, RuntimeError):
        same = False
    return None if same else path or " (value)"


def _copy(state: Any) -> Any:
    """A deep copy of a callback state (tensors cloned), so later changes to the callback do not alter it."""
    if isinstance(state, dict):
        return {k: _copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_copy(v) for v in state) if isinstance(state, list) else tuple(_copy(v) for v in state)
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, np.ndarray):
        return state.copy()
    return state


def _digest(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype="<i8").tobytes(), digest_size=8).hexdigest()
