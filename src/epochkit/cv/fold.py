"""One fold of a cross-validation, as one function: :func:`run_fold` takes a small, picklable :class:`FoldSpec` (the
fold's plan slice, the snapshot's checksum, the trainer settings, the paths, the seed) and a :class:`FoldJob` (the
model and the data, shared by every fold a process runs) and returns a :class:`FoldOutcome` (the fold's results,
history, out-of-fold rows and checksum).

The in-process loop of :class:`~epochkit.cv.CrossValidator` and :class:`~epochkit.cv.RayExecutor` both call it, so
the two cannot drift apart. The fold writes its own files under ``root_dir/fold_k`` (TensorBoard run, history,
checkpoints, weights); the driver writes the results (``fold_result.json``, ``oof.pt``, ``cv_results.*``).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn

from epochkit._distributed import DestroyProcessGroupAtExit
from epochkit._io import load_torch, read_json, save_torch_atomic, write_json_atomic
from epochkit._validation import is_int
from epochkit.cv.callbacks import FoldMonitor, OOFPredictor, ResumeCheckpoint, scalar_metrics
from epochkit.cv.data import FoldDataModule
from epochkit.cv.integrity import file_checksum, relative_to
from epochkit.cv.reset import WeightReset, WeightResetError, reinit_parameters, unwrap_compiled, weights_checksum
from epochkit.cv.results import FoldResult, best_of
from epochkit.cv.rows import concat_rows, take_rows

__all__ = ["FoldJob", "FoldOutcome", "FoldSpec", "TrainerFactory", "run_fold"]

log = logging.getLogger("epochkit.cv")

TrainerFactory = Callable[[int], pl.Trainer]
FOLD_RESULT = "fold_result.json"
FOLD_OOF = "oof.pt"
KEPT_FILE = "kept.json"
WORKER_FILE = "worker.json"


# Loggers through which Lightning prints its INFO lines (device banner, tips, "`Trainer.fit` stopped", ...).
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


class RepeatedInfoDropped(logging.Filter):
    """While active, drops INFO (and DEBUG) records of the named loggers that repeat, word for word, one already
    shown: every fold's Trainer prints Lightning's device banner and tips again. Warnings always pass."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        if message in self.shown:
            return False
        self.shown.add(message)
        return True

    def __enter__(self) -> RepeatedInfoDropped:
        for name in self.names:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            logging.getLogger(name).removeFilter(self)


def is_rank_zero() -> bool:
    """Global rank 0 of this process, known before any Trainer (set from ``RANK``/``LOCAL_RANK`` at import, so under
    ``strategy="ddp"`` scripts every rank knows it)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def reset_metric_states(module: nn.Module) -> None:
    """Reset every torchmetrics ``Metric`` inside ``module``."""
    from torchmetrics import Metric

    for sub in module.modules():
        if isinstance(sub, Metric):
            sub.reset()


@dataclass(frozen=True)
class FoldSpec:
    """Everything one fold needs besides the model and the data: small and picklable.

    Attributes:
        fold: The fold's number ``k``.
        train: Indices of the training samples in the DataModule's training dataset (sorted).
        val: Indices of the validation samples (sorted).
        plan_hash: Hash of the whole fold plan (every rank and worker checks it runs the same plan).
        n_samples: Size of the training dataset the plan was made for.
        root_dir: The cross-validation's directory (absolute); the fold writes under ``root_dir/fold_k``.
        run_id: Token of the ``fit`` call the fold belongs to (progress files of earlier runs are told apart).
        reset: ``"snapshot"`` or ``"reinit"``.
        snapshot_checksum: Checksum of the driver's snapshot: the weights every fold starts from (before a reinit).
        seed: The cross-validation's seed; the fold uses ``seed + fold``.
        seed_folds: Call ``seed_everything(seed + fold)`` first.
        resume_checkpoints: Save ``resume/last.ckpt`` every epoch, and resume from it when it exists.
        predict: Make out-of-fold predictions with ``predict_step``.
        metric_modes: ``{"metric": "min" | "max"}`` for the best values.
        trainer_kwargs: ``Trainer`` arguments (callbacks are deep-copied here), or ``None``.
        trainer_factory: ``factory(fold) -> Trainer`` instead of ``trainer_kwargs``, or ``None``.
        manifest_identity: Identity of the manifest (plan and settings) the fold's record and checkpoint carry.
        name: The run's directory under ``root_dir`` (its TensorBoard run, checkpoints, weights): ``fold_k`` when
            empty; the refit on all the data runs as ``"final"`` (see :mod:`epochkit.cv.refit`).
    """

    fold: int
    train: np.ndarray
    val: np.ndarray
    plan_hash: str
    n_samples: int
    root_dir: str
    run_id: str
    reset: str
    snapshot_checksum: str
    seed: int
    seed_folds: bool
    resume_checkpoints: bool
    predict: bool
    metric_modes: Mapping[str, str] = field(default_factory=dict)
    trainer_kwargs: Mapping[str, Any] | None = None
    trainer_factory: TrainerFactory | None = None
    manifest_identity: str = ""
    name: str = ""

    @property
    def fold_dir(self) -> Path:
        return Path(self.root_dir) / (self.name or f"fold_{self.fold}")


@dataclass
class FoldJob:
    """What every fold a process runs shares: the model, the DataModule (set up) and its training dataset.

    Attributes:
        resetter: Holds the snapshot and puts it back before every fold (in-process); ``None`` where the model
            arrives fresh for each fold (a Ray task deserialises its own copy): its checksum is then verified.
        earlier_fold_objects: Objects a ``trainer_factory`` returned for earlier folds in this process (so a
            reused Trainer, callback or logger is caught); kept alive so that identities stay unique.
        check_trainer: Called with each fold's Trainer before it trains (an executor's check of the resources).
        worker: Where the fold runs (host, pid, and for Ray the node), recorded in ``fold_k/worker.json`` and in
            the fold's result.
    """

    model: pl.LightningModule
    datamodule: pl.LightningDataModule
    dataset: Any
    resetter: WeightReset | None = None
    earlier_fold_objects: list[object] = field(default_factory=list)
    check_trainer: Callable[[pl.Trainer, FoldSpec], None] | None = None
    worker: dict[str, Any] = field(default_factory=dict)


@dataclass
class FoldOutcome:
    """What a fold returns to the driver: its result and its out-of-fold rows (``{"index", "predictions"}`` in
    dataset order, on rank 0 when predicting; ``None`` otherwise)."""

    result: FoldResult
    oof: dict[str, Any] | None = None


def local_worker() -> dict[str, Any]:
    """This process as a place a fold runs: host name and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


# ------------------------------------------------------------------------------------------------- the fold body
def run_fold(spec: FoldSpec, job: FoldJob) -> FoldOutcome:
    """Run one fold from its start weights to its results; see the module docstring.

    Raises:
        WeightResetError: If the weights the fold would start from are not the snapshot's.
        RuntimeError: If the fit did not finish.
    """
    fold_dir = spec.fold_dir
    start = time.perf_counter()
    if spec.seed_folds:
        pl.seed_everything(spec.seed + spec.fold, workers=True, verbose=False)
    checksum = _start_weights(spec, job)
    restored = time.perf_counter()

    ckpt_path, purge_step = _prepare_fold_dir(spec, checksum)
    if is_rank_zero():
        write_json_atomic(fold_dir / WORKER_FILE, {**job.worker, "run_id": spec.run_id, "started": time.time()})
    trainer = _make_trainer(spec, purge_step, job.earlier_fold_objects)
    if job.check_trainer is not None:
        job.check_trainer(trainer, spec)
    resume = fold_dir / "resume" / "last.ckpt"
    monitor = FoldMonitor(
        spec.fold, spec.plan_hash, checksum, str(fold_dir / "history.json"), str(fold_dir / KEPT_FILE)
    )
    # The fold's DDP processes (ddp_spawn workers) exit right after it: without this, gloo may abort them.
    internal: list[Callback] = [monitor, DestroyProcessGroupAtExit()]
    if spec.resume_checkpoints:
        internal.append(ResumeCheckpoint(str(resume)))
    if spec.predict:
        internal.append(OOFPredictor(str(fold_dir / "oof_parts")))
    getattr(trainer, "callbacks").extend(internal)  # noqa: B009  (set in Trainer.__init__, untyped)
    fold_data = FoldDataModule(job.datamodule, job.dataset, spec.train, spec.val)

    model = job.model
    trainer.fit(model, datamodule=fold_data, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.state.finished:
        raise RuntimeError(f"fold {spec.fold} did not finish (trainer status {trainer.state.status}); rerun to resume.")
    fitted = time.perf_counter()

    model_path = fold_dir / "model.pt"
    files: dict[str, str] = {}
    if is_rank_zero():
        save_torch_atomic(unwrap_compiled(model).state_dict(), model_path)
        files[f"{fold_dir.name}/{model_path.name}"] = file_checksum(model_path)
    history = _read_history(fold_dir, monitor)
    # A fold restored from a checkpoint written after its last epoch runs no epoch and logs nothing, so
    # `callback_metrics` is empty: the last recorded epoch (restored with FoldMonitor's state) holds the values.
    last = {**(history[-1]["metrics"] if history else {}), **scalar_metrics(dict(trainer.callback_metrics))}
    best, best_epoch = best_of(history, spec.metric_modes)
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    best_path = checkpoints[0].best_model_path if checkpoints and checkpoints[0].best_model_path else None

    predict_seconds = 0.0
    oof: dict[str, Any] | None = None
    if spec.predict and is_rank_zero():
        oof, predict_seconds = _merge_oof_parts(fold_dir, spec.val)
    validated = time.perf_counter()
    kept_epoch, kept = _read_kept(fold_dir, monitor)
    if kept is None:  # the kept weights are not those the fit validated last (a restore, or no validation)
        kept = _validate_kept(trainer, model, fold_data)
    end = time.perf_counter()
    result = FoldResult(
        fold=spec.fold,
        n_train=len(spec.train),
        n_val=len(spec.val),
        last=last,
        best=best,
        best_epoch=best_epoch,
        kept=kept,
        kept_epoch=kept_epoch,
        history=history,
        best_model_path=best_path,
        model_path=str(model_path),
        weights_checksum=checksum,
        resumed_from=ckpt_path,
        seconds={
            "restore": restored - start,
            "fit": fitted - restored - predict_seconds,
            "predict": predict_seconds,
            "validate_kept": end - validated,
            "total": end - start,
        },
        worker=dict(job.worker),
        manifest_identity=spec.manifest_identity,
        files=files,
    )
    return FoldOutcome(result, oof)


# ------------------------------------------------------------------------------------------------ its steps
def _start_weights(spec: FoldSpec, job: FoldJob) -> str:
    """Put the model at the fold's start weights and return their checksum: the snapshot (restored in place, or
    arrived with the job), checked by checksum, then re-initialised with seed ``seed + fold`` for ``reinit``."""
    model = job.model
    if job.resetter is not None:
        job.resetter.restore(model)
        if spec.reset == "snapshot":
            checksum = job.resetter.verify(model)
    if job.resetter is None:  # a model shipped to this process: it must be the driver's snapshot, byte for byte
        checksum = weights_checksum(model)
        if checksum != spec.snapshot_checksum:
            raise WeightResetError(
                f"fold {spec.fold}: the model that reached this process ({job.worker}) has weights checksum "
                f"{checksum[:12]}, not the driver's snapshot {spec.snapshot_checksum[:12]}."
            )
    if spec.reset == "reinit":
        try:
            reinit_parameters(model, spec.seed + spec.fold)
        except WeightResetError:
            if job.resetter is not None:
                job.resetter.restore(model)
            raise
        checksum = weights_checksum(model)
    reset_metric_states(unwrap_compiled(model))
    return checksum


def _check_resume_checkpoint(spec: FoldSpec, resume: Path, checksum: str) -> None:
    """Refuse a resume checkpoint that is unreadable, unsafe, or not this fold's: its ``FoldMonitor`` state must
    name this fold, this fold plan and the weights the fold starts from (a checkpoint copied from another fold or
    another cross-validation would otherwise "finish" this fold with the other one's weights)."""
    remedy = f"delete {resume.parent} to redo fold {spec.fold} from its start"
    # Checked here with a clear error; then Lightning loads it with weights_only=True too.
    checkpoint = load_torch(resume, "resume checkpoint", mmap=True, remedy=remedy)
    state = checkpoint.get("callbacks", {}).get(FoldMonitor.STATE_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise RuntimeError(f"the resume checkpoint {resume} was not written by a CrossValidator fold; {remedy}.")
    mine = {"fold": spec.fold, "plan_hash": spec.plan_hash, "checksum": checksum}
    theirs = {key: state.get(key) for key in mine}
    if theirs != mine:
        differ = ", ".join(f"{k} {theirs[k]!r} (this fold: {mine[k]!r})" for k in mine if theirs[k] != mine[k])
        raise RuntimeError(f"the resume checkpoint {resume} belongs to another fold or run: {differ}; {remedy}.")


def _prepare_fold_dir(spec: FoldSpec, checksum: str) -> tuple[str | None, int | None]:
    """Resume from the fold's ``last.ckpt`` if there is one (checked for unsafe content and for being this fold's
    first); else start the fold directory clean. Returns the checkpoint path and the TensorBoard ``purge_step``."""
    fold_dir = spec.fold_dir
    resume = fold_dir / "resume" / "last.ckpt"
    if spec.resume_checkpoints and resume.exists():
        _check_resume_checkpoint(spec, resume, checksum)
        sidecar = resume.with_suffix(".json")
        # Lightning logged up to step global_step - 1 before that checkpoint: TensorBoard drops what the failed
        # attempt logged from global_step on, so every step appears once.
        purge_step = None
        if sidecar.exists():
            step = read_json(sidecar, "resume step file", f"delete {resume.parent} to redo fold {spec.fold}")
            if not is_int(step.get("global_step")) or step["global_step"] < 0:
                raise RuntimeError(f"{sidecar} holds no valid global_step; delete {resume.parent} to redo the fold.")
            purge_step = int(step["global_step"])
        log.info("CrossValidator: fold %d resumes from %s", spec.fold, resume)
        return str(resume), purge_step
    if fold_dir.exists() and is_rank_zero():
        shutil.rmtree(fold_dir)  # an attempt that left no checkpoint: start the fold clean
    return None, None


def _make_trainer(spec: FoldSpec, purge_step: int | None, earlier_fold_objects: list[object]) -> pl.Trainer:
    k, fold_dir = spec.fold, spec.fold_dir
    if spec.trainer_factory is not None:
        trainer = spec.trainer_factory(k)
        if not isinstance(trainer, pl.Trainer):
            raise TypeError(f"`trainer_factory({k})` returned {type(trainer).__name__}, not a Trainer.")
        used: list[object] = [trainer, *getattr(trainer, "callbacks", []), *trainer.loggers]
        reused = [type(o).__name__ for o in used if any(o is e for e in earlier_fold_objects)]
        if reused:
            raise ValueError(
                f"`trainer_factory({k})` returned objects an earlier fold used ({reused}); state would leak "
                "between folds: build a new Trainer, new callbacks and new loggers on every call."
            )
        earlier_fold_objects.extend(used)
        return trainer
    kwargs = dict(spec.trainer_kwargs or {})
    callbacks = kwargs.pop("callbacks", None) or []
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    fold_callbacks = [copy.deepcopy(cb) for cb in callbacks]
    for cb in fold_callbacks:
        if isinstance(cb, ModelCheckpoint):
            cb.dirpath = str(Path(cb.dirpath) / fold_dir.name) if cb.dirpath else str(fold_dir / "checkpoints")
    logger: Any = kwargs.pop("logger", True)
    if logger is None or logger is True:
        extra: dict[str, Any] = {} if purge_step is None else {"purge_step": purge_step}
        logger = TensorBoardLogger(
            save_dir=str(fold_dir.parent), name="", version=fold_dir.name, default_hp_metric=False, **extra
        )
    kwargs.setdefault("default_root_dir", str(fold_dir))
    return pl.Trainer(callbacks=fold_callbacks, logger=logger, **kwargs)


def _validate_kept(trainer: pl.Trainer, model: pl.LightningModule, fold_data: FoldDataModule) -> dict[str, float]:
    """Validate the model the fold kept (after an EarlyStopping restore), once, with the fold's own Trainer: the
    metrics of the weights that are saved, ensembled and made the out-of-fold predictions. Not logged: the fold's
    curves keep one point per epoch."""
    core = unwrap_compiled(model)
    if not is_overridden("validation_step", core) or trainer.limit_val_batches == 0:
        return {}
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        outputs = trainer.validate(model, datamodule=fold_data, verbose=False)
    finally:
        trainer.loggers = loggers
    kept: dict[str, float] = {}
    for per_loader in outputs or []:
        kept.update(scalar_metrics(dict(per_loader)))
    return kept


def _read_kept(fold_dir: Path, monitor: FoldMonitor) -> tuple[int | None, dict[str, float] | None]:
    """The epoch whose weights the fold keeps, and their metrics when the fit's last validation measured exactly
    those weights (else ``None``: they are validated again)."""
    path = fold_dir / KEPT_FILE
    if not monitor.ended_here and path.exists():  # written by rank 0 in another process (ddp_spawn workers)
        kept = read_json(path, "kept-epoch file", f"delete {fold_dir} to redo the fold")
        value, metrics = kept.get("kept_epoch"), kept.get("kept_metrics")
        return (None if value is None else int(value)), (None if metrics is None else dict(metrics))
    return monitor.kept_epoch, monitor.kept_metrics


def _read_history(fold_dir: Path, monitor: FoldMonitor) -> list[dict[str, Any]]:
    path = fold_dir / "history.json"
    if not monitor.ended_here and path.exists():  # written by rank 0 in another process (ddp_spawn workers)
        return list(read_json(path, "fold history", f"delete {fold_dir} to redo the fold", expect=list))
    return list(monitor.history)


def _merge_oof_parts(fold_dir: Path, val_idx: np.ndarray) -> tuple[dict[str, Any], float]:
    """The ranks' prediction files merged into ``{"index", "predictions"}`` (each validation sample once, in dataset
    order); the files are removed. Also returns rank 0's prediction seconds."""
    parts_dir = fold_dir / "oof_parts"
    parts = [load_torch(p, "prediction file") for p in sorted(parts_dir.glob("oof_rank*.pt"))]
    parts = [p for p in parts if p["predictions"] is not None]
    if not parts:
        raise RuntimeError(f"no out-of-fold predictions were written to {parts_dir}.")
    positions = np.concatenate([p["positions"].numpy() for p in parts])
    predictions = concat_rows([p["predictions"] for p in parts])
    index = np.asarray(val_idx)[positions]
    # DistributedSampler pads by repeating samples: keep each dataset index once, in dataset order.
    unique, first = np.unique(index, return_index=True)
    missing = np.setdiff1d(val_idx, unique)
    if missing.size:
        raise RuntimeError(f"{fold_dir.name}: no prediction for validation samples {missing[:10].tolist()}.")
    shutil.rmtree(parts_dir)
    merged = {"index": torch.from_numpy(unique), "predictions": take_rows(predictions, first)}
    return merged, float(parts[0].get("seconds", 0.0))


def record_outcome(outcome: FoldOutcome, root_dir: str | os.PathLike) -> None:
    """The driver's part of a finished fold: write its out-of-fold rows (``fold_k/oof.pt``) and then its result
    (``fold_k/fold_result.json``, which marks the fold finished for a rerun), atomically."""
    fold_dir = Path(root_dir) / f"fold_{outcome.result.fold}"
    if outcome.oof is not None:
        save_torch_atomic(outcome.oof, fold_dir / FOLD_OOF)
        outcome.result.files[f"{fold_dir.name}/{FOLD_OOF}"] = file_checksum(fold_dir / FOLD_OOF)
    record = outcome.result.to_dict()
    for name in ("model_path", "best_model_path", "resumed_from"):  # relative: a moved root_dir keeps its own files
        record[name] = relative_to(record[name], root_dir)
    write_json_atomic(fold_dir / FOLD_RESULT, record)
