"""The model to ship: one training run on all of a cross-validation's data, for the number of epochs the folds chose.

:meth:`CrossValidator.refit <epochkit.cv.CrossValidator.refit>` calls :func:`run_refit`. The refit is one more run
of the fold body (:func:`epochkit.cv.fold.run_fold`) in ``root_dir/final``: every sample the folds split is training
data, there is no validation loop, and the Trainer runs ``E`` epochs, where ``E`` follows a rule over the folds
(:func:`refit_epochs`). It starts from the snapshot the folds started from, is seeded with the cross-validation's
``seed`` once the weights are in place, resumes from its last epoch checkpoint when it was killed, and is skipped by
a rerun with the same settings. The pure parts (the epoch rule, which callbacks stay, the Trainer settings, the line
it prints) need no Trainer.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from epochkit._io import check_writable, load_torch, read_json, write_json_atomic
from epochkit._validation import check_int, fail
from epochkit.cv.data import find_training_dataset
from epochkit.cv.fold import (
    FOLD_RESULT,
    FoldJob,
    FoldSpec,
    is_rank_zero,
    local_worker,
    run_fold,
)
from epochkit.cv.integrity import check_tree, preempted_fold, read_fold_record
from epochkit.cv.reset import WeightReset, unwrap_compiled, weights_checksum
from epochkit.cv.results import CVResult, FoldResult

if TYPE_CHECKING:
    from epochkit.cv.validator import CrossValidator

__all__ = ["REFIT_DIR", "RefitResult", "refit_callbacks", "refit_epochs", "refit_trainer_kwargs", "run_refit"]

log = logging.getLogger("epochkit.cv")

OWNER = "CrossValidator.refit"
REFIT_DIR = "final"
REFIT_JSON = "refit.json"
SETTINGS_JSON = "refit_settings.json"

EpochRule = Literal["kept", "best"] | int
_RULE_WORDS = {"kept": "median of the folds' kept epochs", "best": "median of the folds' best epochs"}


@dataclass
class RefitResult:
    """What :meth:`CrossValidator.refit <epochkit.cv.CrossValidator.refit>` returns (and ``root_dir/final/refit.json``
    holds).

    Attributes:
        epochs: ``E``, the epochs the final model was trained for.
        rule: ``"kept"``, ``"best"`` or ``"given"`` (an int was given).
        fold_epochs: Each fold's epoch count under the rule (``kept_epoch + 1`` or ``best_epoch + 1``), by fold;
            empty for ``"given"``.
        monitor: The metric whose best epoch ``"best"`` used, else ``None``.
        n_samples: How many samples the refit trained on (every sample the folds split).
        seed: The seed the refit ran with (the cross-validation's).
        model_path: Where the final weights are (a ``state_dict``).
        estimate: The cross-validation's estimate of every validation metric, from the models the folds kept:
            ``{metric: {"mean", "std", "ci_low", "ci_high", "n"}}`` (Student-t 95% interval of the mean).
        train_metrics: The refit's training metrics at its last epoch.
        skipped: ``True`` when an earlier run had finished this refit and its weights were loaded.
        seconds: Wall time of the refit's training (of the run that trained it).
    """

    epochs: int
    rule: str
    fold_epochs: list[int]
    monitor: str | None
    n_samples: int
    seed: int
    model_path: str
    estimate: dict[str, dict[str, float]] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefitResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def line(self) -> str:
        """The one line a refit prints.

        Example:
            >>> RefitResult(23, "kept", [24, 25, 21, 21, 17], None, 1797, 0, "final/model.pt",
            ...             {"val_acc": {"mean": 0.973, "ci_low": 0.961, "ci_high": 0.985, "n": 5}}).line()
            "final model: 23 epochs (median of the folds' kept epochs 24, 25, 21, 21, 17) on 1797 samples; CV estimate val_acc 0.9730 [0.9610, 0.9850]"
        """  # noqa: E501
        counts = ", ".join(map(str, self.fold_epochs))
        how = "as given" if self.rule == "given" else f"{_RULE_WORDS[self.rule]} {counts}"
        if self.rule == "best" and self.monitor:
            how = how.replace("best epochs", f"best {self.monitor} epochs")
        text = f"final model: {self.epochs} epoch{'s' if self.epochs != 1 else ''} ({how}) on {self.n_samples} samples"
        shown = [
            f"{name} {s['mean']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
            for name, s in sorted(self.estimate.items())
            if s.get("n", 0)
        ]
        if shown:
            text += "; CV estimate " + ", ".join(shown)
        if self.skipped:
            text += f" (finished in an earlier run, skipped: {self.model_path})"
        return text


def refit_epochs(
    folds: Sequence[FoldResult], epochs: EpochRule, monitor: str | None = None
) -> tuple[int, str, list[int]]:
    """``E`` for the refit, the rule's name and each fold's epoch count.

    ``"kept"``: ``ceil(median(kept_epoch + 1))`` over the folds, i.e. the epochs up to and including the one whose
    weights each fold kept (the epoch ``EarlyStopping`` restored, else its last); ``"best"``: the same with each
    fold's best epoch of ``monitor``; an int: that many.

    Example:
        >>> folds = [FoldResult(k, 8, 2, kept_epoch=e, best_epoch={"val_loss": e - 1}) for k, e in enumerate([23, 24, 20, 20, 16])]
        >>> refit_epochs(folds, "kept")
        (21, 'kept', [24, 25, 21, 21, 17])
        >>> refit_epochs(folds[:2], "kept")  # median 24.5, rounded up
        (25, 'kept', [24, 25])
        >>> refit_epochs(folds, "best", "val_loss")
        (20, 'best', [23, 24, 20, 20, 16])
        >>> refit_epochs(folds, 7)
        (7, 'given', [])
    """  # noqa: E501
    if not isinstance(epochs, str):
        return check_int(OWNER, "epochs", epochs, minimum=1), "given", []
    if epochs not in ("kept", "best"):
        fail(OWNER, "epochs", epochs, "'kept', 'best' or an int >= 1")
    counts: list[int] = []
    for fold in folds:
        if epochs == "kept":
            epoch = fold.kept_epoch
            if epoch is None:
                raise ValueError(f"{OWNER}(epochs='kept'): fold {fold.fold} recorded no kept epoch (no epoch ran).")
        else:
            if monitor is None:
                raise ValueError(
                    f"{OWNER}(epochs='best') needs a monitored metric: an EarlyStopping or a ModelCheckpoint with "
                    "`monitor=` in trainer_kwargs' callbacks; or use epochs='kept' or an int."
                )
            if monitor not in fold.best_epoch:
                raise ValueError(
                    f"{OWNER}(epochs='best'): fold {fold.fold} has no best epoch of {monitor!r}; it has "
                    f"{sorted(fold.best_epoch)}."
                )
            epoch = fold.best_epoch[monitor]
        counts.append(int(epoch) + 1)
    if not counts:
        raise ValueError(f"{OWNER}(epochs={epochs!r}) needs finished folds; there are none.")
    return max(1, math.ceil(float(np.median(counts)))), epochs, counts


def monitored_metric(callbacks: Sequence[Callback]) -> str | None:
    """The metric ``"best"`` follows: the first ``EarlyStopping``'s ``monitor``, else the first monitoring
    ``ModelCheckpoint``'s."""
    for kind in (EarlyStopping, ModelCheckpoint):
        for cb in callbacks:
            if isinstance(cb, kind) and getattr(cb, "monitor", None):
                return str(cb.monitor)
    return None


def refit_callbacks(callbacks: Sequence[Callback], train_metrics: set[str]) -> tuple[list[Callback], list[str]]:
    """The callbacks a refit keeps, and one line for each it leaves out: with no validation data, an
    ``EarlyStopping`` and a ``ModelCheckpoint`` monitoring anything but a training metric cannot work.

    Example:
        >>> kept, notes = refit_callbacks([EarlyStopping("val_loss"), ModelCheckpoint(monitor="val_acc"),
        ...                                ModelCheckpoint(monitor="train_loss"), ModelCheckpoint()], {"train_loss"})
        >>> [type(cb).__name__ for cb in kept], len(notes)
        (['ModelCheckpoint', 'ModelCheckpoint'], 2)
        >>> notes[0]
        "refit: EarlyStopping(monitor='val_loss') left out: the refit has no validation data to stop on"
    """
    kept: list[Callback] = []
    notes: list[str] = []
    for cb in callbacks:
        if isinstance(cb, EarlyStopping):
            notes.append(
                f"refit: {type(cb).__name__}(monitor={cb.monitor!r}) left out: the refit has no validation data to "
                "stop on"
            )
        elif isinstance(cb, ModelCheckpoint) and cb.monitor and cb.monitor not in train_metrics:
            notes.append(
                f"refit: {type(cb).__name__}(monitor={cb.monitor!r}) left out: the refit has no validation data to "
                "monitor"
            )
        else:
            kept.append(cb)
    return kept, notes


def refit_trainer_kwargs(trainer_kwargs: Mapping[str, Any] | None, epochs: int) -> dict[str, Any]:
    """The Trainer settings of a refit: the folds' settings with exactly ``epochs`` epochs (no step, epoch-minimum
    or time limit that would end it elsewhere) and no validation loop (nor sanity check).

    Example:
        >>> sorted(refit_trainer_kwargs({"max_epochs": 50, "min_epochs": 3, "max_steps": 900}, 21).items())
        [('limit_val_batches', 0), ('max_epochs', 21), ('max_steps', -1), ('min_epochs', None), ('min_steps', None), ('num_sanity_val_steps', 0)]
    """  # noqa: E501
    kwargs = dict(trainer_kwargs or {})
    kwargs.update(
        max_epochs=epochs, max_steps=-1, min_epochs=None, min_steps=None, limit_val_batches=0, num_sanity_val_steps=0
    )
    return kwargs


def _fold_results(root: Path, plan_hash: str, n_splits: int) -> list[FoldResult]:
    """The finished folds of the cross-validation in ``root`` (which must be the one of ``plan_hash``), each read with
    the checks a reused fold gets (its fold, the manifest's identity, its files' checksums)."""
    from epochkit.cv.validator import MANIFEST

    manifest = root / MANIFEST
    pinned = read_json(manifest, "cross-validation manifest") if manifest.exists() else {}
    if pinned.get("hash") != plan_hash:
        raise ValueError(
            f"{OWNER}: {root} holds no cross-validation of these folds ({manifest} "
            f"{'is missing' if not pinned else 'pins other folds'}); run `fit` with the same settings first."
        )
    folds = []
    for k in range(n_splits):
        path = root / f"fold_{k}" / FOLD_RESULT
        if not path.exists():
            raise ValueError(f"{OWNER}: fold {k} of the cross-validation in {root} has not finished; run `fit` first.")
        folds.append(read_fold_record(path, k, str(pinned.get("identity", "")), root))
    return folds


def run_refit(
    cv: CrossValidator,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    epochs: EpochRule,
    trainer_kwargs: Mapping[str, Any] | None,
) -> RefitResult:
    """The body of :meth:`CrossValidator.refit <epochkit.cv.CrossValidator.refit>` (see there)."""
    cv._check_fit_arguments(model, datamodule, trainer_kwargs, None)
    if not (isinstance(epochs, str) or (isinstance(epochs, int) and not isinstance(epochs, bool))):
        fail(OWNER, "epochs", epochs, "'kept', 'best' or an int >= 1", TypeError)
    if epochs not in ("kept", "best") and not (isinstance(epochs, int) and epochs >= 1):
        fail(OWNER, "epochs", epochs, "'kept', 'best' or an int >= 1")
    root = Path(cv.root_dir)
    planned = getattr(cv, "fit_plan_", None)
    # The plan `fit` made for this DataModule (set up then); planning again would set it up again for nothing.
    plan = planned[1] if planned is not None and planned[0] is datamodule else cv.plan(datamodule)
    check_tree(root)  # no symbolic link inside root_dir: nothing written or deleted outside it
    check_writable(root, "CrossValidator root_dir")
    folds = _fold_results(root, plan.hash, plan.n_splits)
    callbacks = (trainer_kwargs or {}).get("callbacks") or []
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    monitor = monitored_metric(callbacks) if epochs == "best" else None
    n_epochs, rule, fold_epochs = refit_epochs(folds, epochs, monitor)

    lightning_module = unwrap_compiled(model)
    resetter = WeightReset()
    start_checksum = cv._snapshot(model, resetter)
    started_from = {f.weights_checksum for f in folds if f.weights_checksum}
    if cv.reset == "snapshot" and started_from and started_from != {start_checksum}:
        raise ValueError(
            f"{OWNER}: the folds in {root} started from weights with checksum {sorted(started_from)[0][:12]}, but the "
            f"model given now has checksum {start_checksum[:12]}: the refit must start where the folds did. Give "
            "the model as it was given to `fit` (seed before building it), or run `fit` again."
        )
    validation = {name for f in folds for name in f.kept}
    seen = {name for f in folds for record in f.history for name in record.get("metrics", {})}
    kept_callbacks, notes = refit_callbacks(callbacks, seen - validation)
    kwargs = refit_trainer_kwargs({**(trainer_kwargs or {}), "callbacks": kept_callbacks}, n_epochs)
    if cv.executor is not None:
        kwargs = cv.executor.fold_trainer_kwargs(kwargs)
    all_idx = np.unique(np.concatenate([*plan.train, *plan.val])).astype(np.int64)
    aggregate = CVResult(folds=folds, root_dir=str(root), metric_modes=dict(cv.metric_modes)).aggregate()["kept"]
    result = RefitResult(
        epochs=n_epochs,
        rule=rule,
        fold_epochs=fold_epochs,
        monitor=monitor,
        n_samples=int(all_idx.size),
        seed=cv.seed,
        model_path=str(root / REFIT_DIR / "model.pt"),
        estimate={name: s for name, s in aggregate.items() if name in validation},
    )
    settings = json.loads(
        json.dumps(
            {
                "epochs": n_epochs,
                "plan_hash": plan.hash,
                "n_samples": result.n_samples,
                "start_checksum": start_checksum,
                "config": cv._fingerprint(lightning_module, kwargs, None),
            }
        )
    )
    final = root / REFIT_DIR
    done = final / REFIT_JSON
    recorded = read_json(done, "refit record", f"delete {final} to redo the refit") if done.exists() else {}
    if recorded.get("settings") == settings:
        earlier = RefitResult.from_dict(recorded)
        earlier.model_path = result.model_path  # this root_dir's, wherever it was when the refit ran
        lightning_module.load_state_dict(load_torch(earlier.model_path, "refit weights"))
        earlier.skipped = True
        log.info("CrossValidator: the refit finished in an earlier run; skipped")
        cv._print(earlier.line())
        return earlier
    settings_file = root / SETTINGS_JSON  # beside final/: the fold body clears a final/ without a checkpoint
    if final.exists():
        old = read_json(settings_file, "refit settings", f"delete it and {final}") if settings_file.exists() else None
        if old != settings:
            changed = sorted(k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k))
            cv._print(f"refit: {final} holds a refit with other settings ({', '.join(changed)}); it is redone")
            if is_rank_zero():
                shutil.rmtree(final)
    if is_rank_zero():
        write_json_atomic(settings_file, settings)
    for note in notes:
        cv._print(note)
        log.info("CrossValidator: %s", note)

    spec = FoldSpec(
        fold=0,  # seeds with `seed + 0`: the cross-validation's seed
        train=all_idx,
        val=np.zeros(0, dtype=np.int64),
        plan_hash=plan.hash,
        n_samples=plan.n_samples,
        root_dir=str(root.absolute()),
        run_id=secrets.token_hex(8),
        reset=cv.reset,
        snapshot_checksum=start_checksum,
        seed=cv.seed,
        seed_folds=True,
        resume_checkpoints=cv.resume_checkpoints,
        predict=False,
        trainer_kwargs=kwargs,
        name=REFIT_DIR,
    )
    dataset = find_training_dataset(datamodule)
    start = time.perf_counter()
    with cv.lightning_info_filter():
        if cv.executor is None:
            job = FoldJob(model, datamodule, dataset, resetter=resetter, worker=local_worker())
            with preempted_fold(0, root, refit_dir=REFIT_DIR):
                outcome = run_fold(spec, job)
        else:  # one Ray task; the weights come back through root_dir/final/model.pt
            outcomes = cv.executor.run([spec], FoldJob(model, datamodule, dataset))
            try:
                outcome = next(iter(outcomes))
            finally:
                outcomes.close()
            lightning_module.load_state_dict(load_torch(result.model_path, "refit weights"))
    result.seconds = time.perf_counter() - start
    result.train_metrics = dict(outcome.result.last)
    if is_rank_zero():
        write_json_atomic(done, {**result.to_dict(), "settings": settings, "weights": weights_checksum(model)})
    log.info("CrossValidator: %s", result.line())
    cv._print(result.line())
    return result
