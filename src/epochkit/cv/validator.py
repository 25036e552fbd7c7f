"""``CrossValidator``: K-fold cross-validation of an unmodified LightningModule and DataModule, one fresh Trainer
per fold, with every piece of state reset and verified between folds."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from epochkit._io import check_writable, load_torch, read_json, save_torch_atomic, write_json_atomic
from epochkit._validation import check_bool, check_choice, check_int, check_path, fail
from epochkit.cv.data import find_labels, find_training_dataset, per_sample_values
from epochkit.cv.fold import (
    FOLD_RESULT,
    LIGHTNING_INFO_LOGGERS,
    FoldJob,
    FoldOutcome,
    FoldSpec,
    RepeatedInfoDropped,
    TrainerFactory,
    is_rank_zero,
    local_worker,
    record_outcome,
    reset_metric_states,
    run_fold,
)
from epochkit.cv.integrity import (
    FOLD_DIR,
    OWNED_NAMES,
    WAY_OUT,
    RootDirError,
    check_tree,
    finished_records,
    manifest_identity,
    preempted_fold,
    read_fold_record,
)
from epochkit.cv.ray_executor import RayExecutor
from epochkit.cv.refit import EpochRule, RefitResult, run_refit
from epochkit.cv.reset import WeightReset, WeightResetError, unwrap_compiled
from epochkit.cv.results import CVResult, FoldResult
from epochkit.cv.rows import concat_rows, take_rows
from epochkit.cv.splits import FoldPlan, default_splitter, make_plan
from epochkit.cv.summary import write_summary_run

log = logging.getLogger("epochkit.cv")

OWNER = "CrossValidator"
MANIFEST = "cv_manifest.json"
OOF_FILE = "oof_predictions.pt"


def _stable_repr(value: Any) -> str:
    """``repr`` without memory addresses, so equal settings give equal strings in two runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _fold_line(fold: FoldResult, n_splits: int, skipped_from: Path | None) -> str:
    """The one line a user reads per fold: what ran (or that an earlier run finished it) and what the fold kept."""
    head = f"fold {fold.fold} ({fold.fold + 1}/{n_splits}): "
    if skipped_from is not None:
        head += f"finished in an earlier run, skipped ({skipped_from})"
    else:
        epochs = len(fold.history)
        head += f"{epochs} epoch{'s' if epochs != 1 else ''}"
        if fold.resumed_from:
            head += f" (resumed from {fold.resumed_from})"
        head += f", {fold.seconds.get('total', float('nan')):.1f} s"
    values, which = (fold.kept, "kept") if fold.kept else (fold.last, "last epoch")
    if fold.kept and fold.kept_epoch is not None:
        last_epoch = fold.history[-1]["epoch"] if fold.history else None
        which = "kept the last epoch" if fold.kept_epoch == last_epoch else f"kept epoch {fold.kept_epoch}"
    shown = ", ".join(f"{name} {value:.4f}" for name, value in sorted(values.items()))
    return f"{head}; {which}: {shown}" if shown else head


def _materialise_lazy_modules(module: nn.Module) -> None:
    """Run ``module`` once on its ``example_input_array`` (in eval mode, without gradients) so lazy modules get
    their shapes; the input is passed as Lightning passes it: tuple -> ``*args``, dict -> ``**kwargs``."""
    example = getattr(module, "example_input_array")  # noqa: B009  (checked by the caller; untyped attribute)
    training = module.training
    module.eval()
    with torch.no_grad():
        if isinstance(example, tuple):
            module(*example)
        elif isinstance(example, dict):
            module(**example)
        else:
            module(example)
    module.train(training)


class CrossValidator:
    """K-fold cross-validation with a fresh Trainer per fold and a verified weight reset between folds.

    Every fold gets: the weights of before fold 0 (``reset="snapshot"``, checked by checksum, which is logged) or a
    seeded re-initialisation (``reset="reinit"``); reset torchmetrics states and no gradients; a fresh Trainer, so
    ``configure_optimizers`` runs again (fresh optimizer and scheduler) and the loops start from zero; deep copies
    of the callbacks in ``trainer_kwargs`` (``ModelCheckpoint`` writes to a per-fold directory); its own TensorBoard
    run ``root_dir/fold_k``; the global seed ``seed + k``.

    Folds are ``Subset``s of the DataModule's training dataset (see :mod:`epochkit.cv.data` for how it is found and
    how the loaders keep the user's settings). The folds are computed once, checked for leakage and pinned in
    ``root_dir/cv_manifest.json``; running again with the same ``root_dir`` resumes: finished folds are skipped,
    an interrupted fold is redone from its last epoch checkpoint. The manifest also pins a fingerprint of the
    settings (the module's class and ``hparams``, ``trainer_kwargs`` without the callbacks, the callbacks' types,
    ``reset``, ``seed``, ``seed_folds``), and with ``reset="snapshot"`` finished folds must have started from the
    model's current weights (checksum): different folds, settings or starting weights for the same ``root_dir``
    are an error unless ``overwrite=True``. Settings outside the fingerprint (the DataModule, a
    ``trainer_factory``'s Trainer, a callback's arguments) are not checked: change ``root_dir`` with them.

    Args:
        n_splits: Number of folds (default 5); leave it out when ``splitter`` is given.
        splitter: Any scikit-learn style splitter (``split(X, y, groups)`` and ``get_n_splits``): ``KFold``,
            ``StratifiedKFold``, ``GroupKFold``, ``TimeSeriesSplit``, ... Default: ``KFold(shuffle=True,
            random_state=seed)``, ``StratifiedKFold`` with ``stratify``, ``GroupKFold`` with ``groups``.
        stratify: Keep the class proportions in every fold (labels from ``labels`` or the dataset); with a
            ``splitter``, that splitter must stratify (``StratifiedKFold``, ...), else it is an error.
        labels: Per-sample labels for stratification, or the name of a dataset attribute holding them; default:
            the dataset's ``targets``/``labels``/``y``, or a ``TensorDataset``'s last 1-D tensor.
        groups: Per-sample group ids, or the name of a dataset attribute holding them; no group is ever split
            between training and validation.
        seed: Seeds the default splitter and, as ``seed + k``, fold ``k`` (and ``reset="reinit"``).
        reset: ``"snapshot"`` or ``"reinit"`` (``reset_parameters`` with seed ``seed + k``; every parameter must be
            covered).
        root_dir: Directory for the manifest, fold logs and checkpoints, results and predictions (default
            ``cv_runs``, relative to the working directory).
        overwrite: Start over in a ``root_dir`` that holds another cross-validation (its outputs are deleted).
        predict: Out-of-fold predictions from ``predict_step``: ``"auto"`` when the module overrides it.
        metric_modes: ``{"metric": "min" | "max"}`` for the "best" values, where the name does not tell (a name
            with a whole word like ``loss``, ``error``, ``mse``, ``mape``, ``kl`` is minimised, anything else
            maximised; see :func:`~epochkit.cv.results.metric_mode`; monitored metrics use their callback's ``mode``).
        resume_checkpoints: Save ``last.ckpt`` every epoch so an interrupted fold resumes mid-way; it holds the
            global torch, NumPy and Python RNG states (rank 0's), so a shuffling train loader continues its
            stream. A loader's own ``generator=`` is not saved: a resumed fold then draws other orders.
        seed_folds: Call ``seed_everything(seed + k)`` before fold ``k`` (so a resumed CV equals a fresh one).
        verbose: Print, on rank 0, one line per fold (what ran, or that an earlier run finished it, and the metrics
            of the model it kept), the results table and where the files are. Whatever its value, Lightning's INFO
            lines that repeat, word for word, one an earlier fold printed (its device banner and tips, every fold)
            are dropped while the folds run; its warnings are not. ``verbose=False`` prints nothing; the
            ``epochkit.cv`` logger (``logging.getLogger("epochkit.cv")``) records the run's start and the results
            table at INFO and its warnings either way, for an application that configures logging.
        executor: ``None`` runs the folds one after another in this process, on ``model`` itself; a
            :class:`~epochkit.cv.RayExecutor` runs each unfinished fold as a Ray task, side by side, with the same
            guarantees, the same results and the same files in ``root_dir``. Both run the same fold body
            (:func:`epochkit.cv.fold.run_fold`).

    Example:
        Two folds of the digits task, one short epoch each:

        >>> import tempfile
        >>> from epochkit.demo import DigitsClassifier, DigitsDataModule
        >>> quick = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0,
        ...              logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...              enable_model_summary=False)
        >>> from epochkit.cv import weights_checksum
        >>> model = DigitsClassifier()
        >>> before = weights_checksum(model)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     cv = CrossValidator(n_splits=2, seed=0, root_dir=root, verbose=False)
        ...     result = cv.fit(model, DigitsDataModule(batch_size=64), trainer_kwargs=quick)
        ...     written = sorted(p.name for p in Path(root).glob("*.*"))
        >>> [(fold.fold, fold.n_train, fold.n_val) for fold in result.folds]
        [(0, 718, 719), (1, 719, 718)]
        >>> written
        ['cv_manifest.json', 'cv_results.csv', 'cv_results.json', 'oof_predictions.pt']
        >>> weights_checksum(model) == before  # every fold started from these weights; the model is back at them
        True
    """

    def __init__(
        self,
        n_splits: int | None = None,
        *,
        splitter: Any = None,
        stratify: bool = False,
        labels: Sequence[Any] | np.ndarray | torch.Tensor | str | None = None,
        groups: Sequence[Any] | np.ndarray | torch.Tensor | str | None = None,
        seed: int = 0,
        reset: Literal["snapshot", "reinit"] = "snapshot",
        root_dir: str | os.PathLike = "cv_runs",
        overwrite: bool = False,
        predict: bool | Literal["auto"] = "auto",
        metric_modes: Mapping[str, Literal["min", "max"]] | None = None,
        resume_checkpoints: bool = True,
        seed_folds: bool = True,
        verbose: bool = True,
        executor: RayExecutor | None = None,
    ) -> None:
        if splitter is None:
            n_splits = 5 if n_splits is None else n_splits
            if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
                raise ValueError(f"`n_splits` must be an int >= 2, got {n_splits!r}.")
        else:
            if not (callable(getattr(splitter, "split", None)) and callable(getattr(splitter, "get_n_splits", None))):
                raise TypeError(f"`splitter` must have `split` and `get_n_splits` methods, got {splitter!r}.")
            if stratify and "Stratified" not in type(splitter).__name__:
                raise ValueError(
                    f"`stratify=True` with `splitter={splitter!r}`, which does not stratify: give a stratified "
                    "splitter (e.g. `StratifiedKFold`, `StratifiedGroupKFold`), or leave `splitter` out to get one."
                )
            own = getattr(splitter, "n_splits", None)
            if n_splits is not None and own is not None and own != n_splits:
                raise ValueError(f"`n_splits={n_splits}` disagrees with `splitter={splitter!r}`; give only one.")
        if reset not in ("snapshot", "reinit"):
            raise ValueError(f"`reset` must be 'snapshot' or 'reinit', got {reset!r}.")
        check_choice(OWNER, "predict", predict, (True, False, "auto"))
        if metric_modes is not None and not isinstance(metric_modes, Mapping):
            fail(OWNER, "metric_modes", metric_modes, "a mapping of metric names to 'min' or 'max'", TypeError)
        for name, mode in (metric_modes or {}).items():
            if mode not in ("min", "max"):
                fail(OWNER, "metric_modes", metric_modes, f"'min' or 'max' for every metric ({name!r}: {mode!r})")
        for flag in ("stratify", "overwrite", "resume_checkpoints", "seed_folds", "verbose"):
            check_bool(OWNER, flag, locals()[flag])
        seed = check_int(OWNER, "seed", seed, minimum=0, maximum=2**31 - 1)  # seed + k must stay a NumPy seed
        check_path(OWNER, "root_dir", root_dir)
        if executor is not None and not isinstance(executor, RayExecutor):
            fail(OWNER, "executor", executor, "None (folds in this process) or a RayExecutor", TypeError)
        for argument, value in (("labels", labels), ("groups", groups)):
            if value is not None and (
                isinstance(value, bytes) or not isinstance(value, str | Sequence | np.ndarray | torch.Tensor)
            ):
                fail(
                    OWNER,
                    argument,
                    value,
                    "one value per training sample (a sequence, array or tensor) or the name of a dataset attribute",
                    TypeError,
                )
        self.n_splits = n_splits
        self.splitter = splitter
        self.stratify = stratify
        self.labels = labels
        self.groups = groups
        self.seed = seed
        self.reset = reset
        self.root_dir = root_dir
        self.overwrite = overwrite
        self.predict = predict
        self.metric_modes = dict(metric_modes or {})
        self.resume_checkpoints = resume_checkpoints
        self.seed_folds = seed_folds
        self.verbose = verbose
        self.executor = executor

    # ------------------------------------------------------------------------------------------------ plan
    def plan(self, datamodule: pl.LightningDataModule) -> FoldPlan:
        """Set the DataModule up (``prepare_data`` on rank 0, ``setup("fit")``) and make the checked fold plan."""
        if is_rank_zero():
            datamodule.prepare_data()
        datamodule.setup("fit")
        dataset = find_training_dataset(datamodule)
        return self._plan(dataset)

    def _plan(self, dataset: Any) -> FoldPlan:
        n = len(dataset)
        labels = self._per_sample(dataset, "labels", self.labels)
        labels = find_labels(dataset) if labels is None else labels
        groups = self._per_sample(dataset, "groups", self.groups)
        if self.splitter is not None:
            splitter = self.splitter
        else:
            assert self.n_splits is not None
            if self.n_splits > n:
                raise ValueError(f"`n_splits={self.n_splits}` is more than the {n} samples of the training dataset.")
            splitter = default_splitter(self.n_splits, self.stratify, groups is not None, self.seed)
        stratified = self.stratify or "Stratified" in type(splitter).__name__
        return make_plan(splitter, n, labels, groups, stratified)

    @staticmethod
    def _per_sample(dataset: Any, argument: str, value: Any) -> Any:
        """``labels``/``groups`` as given, or the dataset attribute a string names, as an array."""
        if isinstance(value, str):
            value = per_sample_values(dataset, argument, value)
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value

    # -------------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        trainer_kwargs: Mapping[str, Any] | None = None,
        trainer_factory: TrainerFactory | None = None,
    ) -> CVResult:
        """Run every fold (skipping those a previous run finished) and return the :class:`CVResult`.

        Args:
            model: The LightningModule (``torch.compile``'d is fine); in-process it is trained in place, fold after
                fold, and put back to its starting weights at the end; with an ``executor`` the workers train copies
                of it (it must pickle, as must the DataModule and the callbacks) and it is left as it is.
            datamodule: The DataModule whose training dataset is split.
            trainer_kwargs: ``Trainer`` arguments for every fold. ``callbacks`` are deep-copied per fold;
                ``logger`` may be ``True`` (default: a TensorBoard run ``root_dir/fold_k``) or ``False``.
            trainer_factory: Instead of ``trainer_kwargs``: ``factory(fold) -> Trainer``, called once per fold; it
                must return a new Trainer with new callbacks every time (checked).
        """
        self._check_fit_arguments(model, datamodule, trainer_kwargs, trainer_factory)
        self.fit_trainer_kwargs_ = None if trainer_factory is not None else dict(trainer_kwargs or {})  # for refit
        fold_kwargs = trainer_kwargs
        if self.executor is not None and trainer_factory is None:
            fold_kwargs = self.executor.fold_trainer_kwargs(trainer_kwargs)  # resources vs settings, before anything
        root = Path(self.root_dir)
        plan = self.plan(datamodule)  # every check on the data happens here, before anything is trained
        check_tree(root)  # no symbolic link inside root_dir: nothing written or deleted outside it
        self.fit_plan_ = (datamodule, plan)  # for refit: the DataModule is set up, the plan made
        check_writable(root, "CrossValidator root_dir")  # a read-only or full file system fails before training
        dataset = find_training_dataset(datamodule)

        lightning_module = unwrap_compiled(model)
        self._warn_if_trained(lightning_module)
        resetter = WeightReset()
        snapshot_checksum = self._snapshot(model, resetter)
        config = self._fingerprint(lightning_module, trainer_kwargs, trainer_factory)
        identity = manifest_identity(plan.hash, config)
        self._pin_manifest(root, plan, config)
        reused = self._check_finished_folds(root, plan, snapshot_checksum, identity)
        predict = self.predict if self.predict != "auto" else is_overridden("predict_step", lightning_module)
        modes = {**self._callback_modes(trainer_kwargs), **self.metric_modes}
        result = CVResult(
            folds=[], root_dir=str(root), plan_hash=plan.hash, n_splits=plan.n_splits, metric_modes=modes, model=model
        )
        log.info(
            "CrossValidator: %d folds over %d samples, snapshot %s", plan.n_splits, plan.n_samples, snapshot_checksum
        )
        self._print(f"CrossValidator: {plan.n_splits} folds of {plan.n_samples} samples ({plan.splitter}) in {root}")
        finished = {k: root / f"fold_{k}" / FOLD_RESULT for k in reused}
        run_id = secrets.token_hex(8)
        specs = {
            k: FoldSpec(
                fold=k,
                train=plan.train[k],
                val=plan.val[k],
                plan_hash=plan.hash,
                n_samples=plan.n_samples,
                root_dir=str(root.absolute()),
                run_id=run_id,
                reset=self.reset,
                snapshot_checksum=snapshot_checksum,
                seed=self.seed,
                seed_folds=self.seed_folds,
                resume_checkpoints=self.resume_checkpoints,
                predict=bool(predict),
                metric_modes=modes,
                trainer_kwargs=fold_kwargs,
                trainer_factory=trainer_factory,
                manifest_identity=identity,
            )
            for k in range(plan.n_splits)
            if k not in finished
        }
        self._run_folds(FoldJob(model, datamodule, dataset), resetter, specs, reused, result)
        histories = [fold.history for fold in result.folds]
        self._warn_missing_last(result)
        resetter.restore(model)  # leave the model as it came (the folds' weights are in fold_k/model.pt)
        if isinstance(lightning_module, pl.LightningModule):  # the model is back at its weights: not trained
            lightning_module.trainer = None  # (the last fold's Trainer)
        reset_metric_states(lightning_module)
        if predict and is_rank_zero():  # under `ddp` scripts, other ranks may run ahead of rank 0's merge
            self._collect_oof(root, plan, result)
        if is_rank_zero():
            hparams = dict(getattr(lightning_module, "hparams", {}) or {})
            write_summary_run(root / "summary", result, histories, hparams=hparams)
            log.info("CrossValidator results:\n%s", result.table())
        self._print(str(result))
        files = [root / name for name in ("cv_results.json", "cv_results.csv", OOF_FILE) if (root / name).exists()]
        self._print(f"results: {', '.join(map(str, files))}; curves: tensorboard --logdir {root}")
        return result

    def refit(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        *,
        epochs: EpochRule = "kept",
        trainer_kwargs: Mapping[str, Any] | None = None,
    ) -> RefitResult:
        """Train the model to ship: once, on all of the cross-validation's data, for the epochs the folds chose.

        Runs after :meth:`fit` (in this process or an earlier one) with the same ``root_dir``, model and
        DataModule. ``E`` follows ``epochs``: ``"kept"``, the median over the folds of ``kept_epoch + 1`` (the
        epochs up to and including the one whose weights each fold kept), rounded up; ``"best"``, the same with the
        monitored metric's best epoch (the first ``EarlyStopping``'s ``monitor``, else a ``ModelCheckpoint``'s); an
        int, that many. The refit starts from the snapshot the folds started from (with ``reset="reinit"``: the
        re-initialisation with seed ``seed``, as fold 0's), is seeded with ``seed`` once the weights are in place,
        trains on every sample the folds split with no validation loop, and leaves out ``EarlyStopping`` and a
        ``ModelCheckpoint`` that monitors a validation metric (a line says so for each). Schedules built from the
        Trainer (``configure_optimizers``, ``LRWarmup(fraction=...)``) follow the new length.

        It writes ``root_dir/final/model.pt`` (the ``state_dict``), ``root_dir/final/refit.json`` (the epochs, the
        rule, each fold's epochs, the samples, the seed and the CV estimate of every validation metric) and a
        TensorBoard run ``root_dir/final``, and prints one line. A rerun with the same settings skips it and loads
        its weights; an interrupted refit resumes from its last epoch like a fold. With a ``RayExecutor`` it runs
        as one Ray task. Afterwards ``model`` holds the final weights.

        Args:
            model: The model given to :meth:`fit`, at the weights it had then (``fit`` leaves it there).
            datamodule: The DataModule given to :meth:`fit`.
            epochs: ``"kept"``, ``"best"`` or an int >= 1.
            trainer_kwargs: ``Trainer`` arguments; default: those of this object's last :meth:`fit`. Their epoch
                and step limits are replaced by ``max_epochs=E``.

        Returns:
            A :class:`~epochkit.cv.refit.RefitResult`.
        """
        if trainer_kwargs is None:
            trainer_kwargs = getattr(self, "fit_trainer_kwargs_", None)
            if trainer_kwargs is None:
                raise ValueError(
                    "CrossValidator.refit(trainer_kwargs=None) takes the `trainer_kwargs` of this CrossValidator's "
                    "`fit`, but none ran here (or it used `trainer_factory`): give `trainer_kwargs`."
                )
        return run_refit(self, model, datamodule, epochs, trainer_kwargs)

    @staticmethod
    def _check_fit_arguments(model: Any, datamodule: Any, trainer_kwargs: Any, trainer_factory: Any) -> None:
        """Clear errors for ``fit``'s arguments, before the data is touched."""
        if not isinstance(unwrap_compiled(model) if isinstance(model, nn.Module) else model, pl.LightningModule):
            fail("CrossValidator.fit", "model", model, "a LightningModule (torch.compile'd or not)", TypeError)
        if not isinstance(datamodule, pl.LightningDataModule):
            fail("CrossValidator.fit", "datamodule", datamodule, "a LightningDataModule", TypeError)
        if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
            fail("CrossValidator.fit", "trainer_kwargs", trainer_kwargs, "a mapping of Trainer arguments", TypeError)
        if trainer_factory is not None and not callable(trainer_factory):
            fail("CrossValidator.fit", "trainer_factory", trainer_factory, "a function fold -> Trainer", TypeError)
        if trainer_kwargs is not None and trainer_factory is not None:
            raise ValueError("give `trainer_kwargs` or `trainer_factory`, not both.")
        callbacks = (trainer_kwargs or {}).get("callbacks")
        if not (callbacks is None or isinstance(callbacks, Callback | list | tuple)) or not all(
            isinstance(cb, Callback) for cb in ([callbacks] if isinstance(callbacks, Callback) else callbacks or [])
        ):
            fail("CrossValidator.fit", "trainer_kwargs", trainer_kwargs, "callbacks: a Callback or a list of them")
        if trainer_kwargs is not None and trainer_kwargs.get("logger", True) not in (True, False, None):
            raise ValueError(
                "CrossValidator makes one logger run per fold: `trainer_kwargs['logger']` may be True "
                "(TensorBoard under root_dir/fold_k) or False; for other loggers use `trainer_factory`."
            )

    def _warn_if_trained(self, module: nn.Module) -> None:
        """Warn when the model has been trained already (``reset="snapshot"``): every fold would start from weights
        that have seen its validation samples."""
        if self.reset != "snapshot" or not isinstance(module, pl.LightningModule):
            return
        step = module.global_step
        if module._trainer is None and step == 0:
            return
        how = f"global_step={step}" if step else "a Trainer is attached to it"
        rank_zero_warn(
            f"CrossValidator.fit: the model given has been trained already ({how}). Every fold starts from its "
            "weights, which have seen that fold's validation samples, so the cross-validation's estimate is "
            "optimistic. Give a freshly built model (seed before building it), or use `reset='reinit'`."
        )

    @staticmethod
    def _snapshot(model: pl.LightningModule, resetter: WeightReset) -> str:
        """Snapshot the starting weights (materialising lazy modules first if needed); their checksum."""
        try:
            return resetter.snapshot(model)
        except WeightResetError as err:
            lightning_module = unwrap_compiled(model)
            if getattr(lightning_module, "example_input_array", None) is None:
                raise
            _materialise_lazy_modules(lightning_module)
            log.info("CrossValidator materialised lazy modules with `example_input_array` (%s)", err)
            return resetter.snapshot(model)

    def _run_folds(
        self,
        job: FoldJob,
        resetter: WeightReset,
        specs: dict[int, FoldSpec],
        reused: dict[int, FoldResult],
        result: CVResult,
    ) -> None:
        """The fold loop: skip the folds an earlier run finished (their records checked), run the others, record
        each into ``result``."""
        root = Path(result.root_dir)
        finished = {k: root / f"fold_{k}" / FOLD_RESULT for k in reused}
        by_fold: dict[int, FoldResult] = {}

        def record(fold_result: FoldResult, skipped_from: Path | None) -> None:
            self._print(_fold_line(fold_result, result.n_splits, skipped_from))
            by_fold[fold_result.fold] = fold_result
            result.folds = [by_fold[k] for k in sorted(by_fold)]
            if is_rank_zero():
                result.save()

        def skip(k: int) -> None:
            log.info("CrossValidator: fold %d finished in an earlier run; skipped", k)
            record(reused[k], finished[k])

        def finish(outcome: FoldOutcome) -> None:
            if is_rank_zero():  # the driver alone writes results: the fold's OOF rows, then fold_result.json
                record_outcome(outcome, root)
            record(outcome.result, None)

        with self.lightning_info_filter():
            if self.executor is None:  # one fold after another, in this process, on the model itself
                in_process = FoldJob(job.model, job.datamodule, job.dataset, resetter=resetter, worker=local_worker())
                for k in range(result.n_splits):
                    if k in finished:
                        skip(k)
                    else:
                        with preempted_fold(k, root):
                            outcome = run_fold(specs[k], in_process)
                        finish(outcome)
            else:  # side by side: the model travels to the executor's workers; results come back as they finish
                for k in sorted(finished):
                    skip(k)
                with contextlib.closing(self.executor.run(list(specs.values()), job)) as outcomes:
                    for outcome in outcomes:
                        finish(outcome)

    def lightning_info_filter(self) -> RepeatedInfoDropped:
        """The one filter of Lightning's repeated INFO lines for this object's folds and refit (shown once in all)."""
        if getattr(self, "info_filter_", None) is None:
            self.info_filter_ = RepeatedInfoDropped(LIGHTNING_INFO_LOGGERS)
        return self.info_filter_

    def _print(self, line: str) -> None:
        """Print ``line`` to stdout on rank 0 when ``verbose``: what a user running a cross-validation reads.

        Printed, not logged, on purpose: the README promises these lines on stdout ("What it prints") and the tests
        read them there, while a handler on the ``epochkit.cv`` logger would write to stderr (as Lightning's does)
        and show the INFO records that logger already carries (the run's start, the results table) a second time.
        ``verbose=False`` prints nothing; the logger is unaffected by it.
        """
        if self.verbose and is_rank_zero():
            print(line, flush=True)

    # ------------------------------------------------------------------------------------------ internals
    def _fingerprint(
        self,
        lightning_module: nn.Module,
        trainer_kwargs: Mapping[str, Any] | None,
        trainer_factory: TrainerFactory | None,
    ) -> dict[str, Any]:
        """What a finished fold's results depend on besides the folds and the starting weights, as plain strings."""
        kwargs = {k: v for k, v in (trainer_kwargs or {}).items() if k != "callbacks"}
        callbacks = (trainer_kwargs or {}).get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        return {
            "model": f"{type(lightning_module).__module__}.{type(lightning_module).__qualname__}",
            "hparams": _stable_repr(dict(getattr(lightning_module, "hparams", {}) or {})),
            "trainer_kwargs": _stable_repr(kwargs),
            "callbacks": [type(cb).__qualname__ for cb in callbacks],
            "trainer_factory": None if trainer_factory is None else getattr(trainer_factory, "__qualname__", "?"),
            "reset": self.reset,
            "seed": self.seed,
            "seed_folds": self.seed_folds,
        }

    def _check_finished_folds(
        self, root: Path, plan: FoldPlan, snapshot_checksum: str, identity: str
    ) -> dict[int, FoldResult]:
        """The records of the folds an earlier run finished, each checked (fold, manifest identity, file checksums:
        :func:`~epochkit.cv.integrity.read_fold_record`) and, in snapshot mode, started from the same weights."""
        records = finished_records(root)
        stray = sorted(k for k in records if k >= plan.n_splits)
        if stray:
            raise RootDirError(
                f"{records[stray[0]]} is the record of a fold this {plan.n_splits}-fold cross-validation does not "
                f"have; {WAY_OUT}."
            )
        reused = {k: read_fold_record(path, k, identity, root) for k, path in sorted(records.items())}
        if self.reset != "snapshot":
            return reused  # reinit: the weights come from `seed + k`, which the manifest's fingerprint pins
        for k, fold_result in reused.items():
            done = records[k]
            stored = fold_result.weights_checksum
            if stored is not None and stored != snapshot_checksum:
                raise ValueError(
                    f"{done} was trained from weights with checksum {str(stored)[:12]}, but the model given now "
                    f"has checksum {snapshot_checksum[:12]}: its results would be reused for another model. Seed "
                    "before building the model (`lightning.seed_everything`) so that a rerun starts from the same "
                    "weights, use another `root_dir`, or `overwrite=True` to delete that cross-validation."
                )
        return reused

    def _pin_manifest(self, root: Path, plan: FoldPlan, config: dict[str, Any]) -> None:
        path = root / MANIFEST
        if not path.exists() and finished_records(root):
            if not self.overwrite:
                raise RootDirError(
                    f"{root} holds finished folds ({', '.join(str(p) for p in finished_records(root).values())}) "
                    f"but no {MANIFEST}: nothing says which folds and settings they were made with, so they cannot "
                    f"be reused; {WAY_OUT}."
                )
            if is_rank_zero():
                self._clear(root)
        if path.exists():
            old = read_json(path, "cross-validation manifest", f"delete it and its fold directories, or {WAY_OUT}")
            old_config = old.get("config")
            if old.get("hash") == plan.hash and not self.overwrite:
                if old_config is not None and old_config != config:
                    changed = sorted(k for k in set(old_config) | set(config) if old_config.get(k) != config.get(k))
                    then = {k: old_config.get(k) for k in changed}
                    now = {k: config.get(k) for k in changed}
                    raise ValueError(
                        f"{path} pins the same folds but other settings (then {then}, now {now}); its finished "
                        "folds would be reused with stale results. Use another `root_dir`, or `overwrite=True` to "
                        "delete that cross-validation and start over."
                    )
                return
            if not self.overwrite:
                raise ValueError(
                    f"{path} pins different folds (hash {str(old.get('hash'))[:12]}, {old.get('n_splits')} folds of "
                    f"{old.get('n_samples')} samples by {old.get('splitter')}) than this run (hash {plan.hash[:12]}, "
                    f"{plan.n_splits} folds of {plan.n_samples} samples by {plan.splitter}); use another `root_dir`, "
                    "or `overwrite=True` to delete that cross-validation and start over."
                )
            if is_rank_zero():
                self._clear(root)
        if is_rank_zero():
            write_json_atomic(
                path, {**plan.to_manifest(), "config": config, "identity": manifest_identity(plan.hash, config)}
            )

    @staticmethod
    def _clear(root: Path) -> None:
        for child in root.iterdir():
            if child.is_dir() and (FOLD_DIR.fullmatch(child.name) or child.name in OWNED_NAMES):
                shutil.rmtree(child)
            elif child.name in OWNED_NAMES:
                child.unlink()

    @staticmethod
    def _callback_modes(trainer_kwargs: Mapping[str, Any] | None) -> dict[str, str]:
        modes: dict[str, str] = {}
        for cb in (trainer_kwargs or {}).get("callbacks") or []:
            if isinstance(cb, ModelCheckpoint | EarlyStopping) and cb.monitor:
                modes[cb.monitor] = cb.mode
        return modes

    @staticmethod
    def _warn_missing_last(result: CVResult) -> None:
        """The aggregates skip missing values: say so when a fold lacks a last-epoch metric that other folds have."""
        names = set().union(*(f.last for f in result.folds)) if result.folds else set()
        for fold in result.folds:
            missing = sorted(names - set(fold.last))
            if missing:
                log.warning(
                    "CrossValidator: fold %d has no last-epoch value for %s; the aggregates over folds leave it out",
                    fold.fold,
                    missing,
                )

    def _collect_oof(self, root: Path, plan: FoldPlan, result: CVResult) -> None:
        parts = []
        for k in range(plan.n_splits):
            path = root / f"fold_{k}" / "oof.pt"
            if not path.exists():
                log.warning("CrossValidator: fold %d has no out-of-fold predictions (%s)", k, path)
                return
            parts.append(load_torch(path, "out-of-fold prediction file"))
        index = np.concatenate([p["index"].numpy() for p in parts])
        if np.unique(index).size != index.size:
            log.warning("CrossValidator: samples are validated in several folds; out-of-fold predictions are per fold")
            return
        order = np.argsort(index, kind="stable")
        result.oof_index = index[order]
        result.oof_predictions = take_rows(concat_rows([p["predictions"] for p in parts]), order)
        save_torch_atomic(
            {"index": torch.from_numpy(result.oof_index), "predictions": result.oof_predictions}, root / OOF_FILE
        )
