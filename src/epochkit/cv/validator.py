"""``CrossValidator``: K-fold cross-validation of an unmodified LightningModule and DataModule, one fresh Trainer
per fold, with every piece of state reset and verified between folds."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn

from epochkit._distributed import DestroyProcessGroupAtExit
from epochkit._io import check_writable, load_torch, save_torch_atomic, write_json_atomic
from epochkit._validation import check_bool, check_choice, check_int, check_path, fail
from epochkit.cv.callbacks import FoldMonitor, OOFPredictor, ResumeCheckpoint, concat_rows, scalar_metrics, take_rows
from epochkit.cv.data import FoldDataModule, find_labels, find_training_dataset
from epochkit.cv.reset import WeightReset, WeightResetError, reinit_parameters, unwrap_compiled, weights_checksum
from epochkit.cv.results import CVResult, FoldResult, best_of
from epochkit.cv.splits import FoldPlan, default_splitter, make_plan
from epochkit.cv.summary import write_summary_run

log = logging.getLogger("epochkit.cv")

OWNER = "CrossValidator"
MANIFEST = "cv_manifest.json"
FOLD_RESULT = "fold_result.json"
KEPT_FILE = "kept.json"
OOF_FILE = "oof_predictions.pt"
# Loggers through which Lightning prints its INFO lines (device banner, tips, "`Trainer.fit` stopped", ...).
_LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)
TrainerFactory = Callable[[int], pl.Trainer]


def _is_rank_zero() -> bool:
    # Set from RANK/LOCAL_RANK at import, so under `strategy="ddp"` scripts every rank knows it before any Trainer.
    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def _stable_repr(value: Any) -> str:
    """``repr`` without memory addresses, so equal settings give equal strings in two runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


class _RepeatedInfoDropped(logging.Filter):
    """While active, drops INFO (and DEBUG) records of the named loggers that repeat, word for word, one already
    shown: every fold's Trainer prints Lightning's device banner and tips again. Warnings always pass."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True

    def __enter__(self) -> _RepeatedInfoDropped:
        for name in self.names:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            logging.getLogger(name).removeFilter(self)


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


def _reset_metric_states(module: nn.Module) -> None:
    from torchmetrics import Metric

    for sub in module.modules():
        if isinstance(sub, Metric):
            sub.reset()


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
            are dropped while the folds run; its warnings are not.

    Example:
        >>> cv = CrossValidator(n_splits=3, seed=1, root_dir="runs/cv")
        >>> cv.n_splits, cv.reset
        (3, 'snapshot')
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
        check_int(OWNER, "seed", seed, minimum=0, maximum=2**31 - 1)  # seed + k must stay a valid NumPy seed
        check_path(OWNER, "root_dir", root_dir)
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

    # ------------------------------------------------------------------------------------------------ plan
    def plan(self, datamodule: pl.LightningDataModule) -> FoldPlan:
        """Set the DataModule up (``prepare_data`` on rank 0, ``setup("fit")``) and make the checked fold plan."""
        if _is_rank_zero():
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
            if getattr(dataset, value, None) is None:
                raise ValueError(
                    f"`{argument}={value!r}` names no attribute of the training dataset ({type(dataset).__name__})."
                )
            value = getattr(dataset, value)
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
            model: The LightningModule (``torch.compile``'d is fine); it is trained in place, fold after fold.
            datamodule: The DataModule whose training dataset is split.
            trainer_kwargs: ``Trainer`` arguments for every fold. ``callbacks`` are deep-copied per fold;
                ``logger`` may be ``True`` (default: a TensorBoard run ``root_dir/fold_k``) or ``False``.
            trainer_factory: Instead of ``trainer_kwargs``: ``factory(fold) -> Trainer``, called once per fold; it
                must return a new Trainer with new callbacks every time (checked).
        """
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
        if trainer_kwargs is not None and trainer_kwargs.get("logger", True) not in (True, False, None):
            raise ValueError(
                "CrossValidator makes one logger run per fold: `trainer_kwargs['logger']` may be True "
                "(TensorBoard under root_dir/fold_k) or False; for other loggers use `trainer_factory`."
            )
        root = Path(self.root_dir)
        plan = self.plan(datamodule)  # every check on the data happens here, before anything is trained
        check_writable(root, "CrossValidator root_dir")  # a read-only or full file system fails before training
        dataset = find_training_dataset(datamodule)

        core = unwrap_compiled(model)
        resetter = WeightReset()
        try:
            snapshot_checksum = resetter.snapshot(model)
        except WeightResetError as err:
            if getattr(core, "example_input_array", None) is None:
                raise
            with torch.no_grad():  # materialise lazy modules with the module's own example input
                training = core.training
                core.eval()
                example = core.example_input_array  # passed as Lightning passes it: tuple -> *args, dict -> **kwargs
                if isinstance(example, tuple):
                    core(*example)
                elif isinstance(example, dict):
                    core(**example)
                else:
                    core(example)
                core.train(training)
            log.info("CrossValidator materialised lazy modules with `example_input_array` (%s)", err)
            snapshot_checksum = resetter.snapshot(model)
        config = self._fingerprint(core, trainer_kwargs, trainer_factory)
        self._pin_manifest(root, plan, config)
        self._check_finished_folds(root, plan, snapshot_checksum)
        predict = self.predict if self.predict != "auto" else is_overridden("predict_step", core)
        modes = {**self._callback_modes(trainer_kwargs), **self.metric_modes}
        result = CVResult(
            folds=[], root_dir=str(root), plan_hash=plan.hash, n_splits=plan.n_splits, metric_modes=modes, model=model
        )
        histories: list[list[dict[str, Any]]] = []
        seen: list[object] = []  # objects earlier folds used; kept alive so that ids stay unique
        log.info(
            "CrossValidator: %d folds over %d samples, snapshot %s", plan.n_splits, plan.n_samples, snapshot_checksum
        )
        self._say(f"CrossValidator: {plan.n_splits} folds of {plan.n_samples} samples ({plan.splitter}) in {root}")
        with _RepeatedInfoDropped(_LIGHTNING_INFO_LOGGERS):
            for k in range(plan.n_splits):
                fold_dir = root / f"fold_{k}"
                done = fold_dir / FOLD_RESULT
                skipped = done.exists()
                if skipped:
                    fold_result = FoldResult.from_dict(json.loads(done.read_text()))
                    log.info("CrossValidator: fold %d finished in an earlier run; skipped", k)
                else:
                    fold_result = self._run_fold(
                        k,
                        model,
                        datamodule,
                        dataset,
                        plan,
                        resetter,
                        trainer_kwargs,
                        trainer_factory,
                        modes,
                        seen,
                        predict,
                    )
                    if _is_rank_zero():
                        write_json_atomic(done, fold_result.to_dict())
                self._say(_fold_line(fold_result, plan.n_splits, done if skipped else None))
                result.folds.append(fold_result)
                histories.append(fold_result.history)
                if _is_rank_zero():
                    result.save()
        self._warn_missing_last(result)
        resetter.restore(model)  # leave the model as it came (the folds' weights are in fold_k/model.pt)
        _reset_metric_states(core)
        if predict and _is_rank_zero():  # under `ddp` scripts, other ranks may run ahead of rank 0's merge
            self._collect_oof(root, plan, result)
        if _is_rank_zero():
            write_summary_run(root / "summary", result, histories, hparams=dict(getattr(core, "hparams", {}) or {}))
            log.info("CrossValidator results:\n%s", result.table())
        self._say(str(result))
        files = [root / name for name in ("cv_results.json", "cv_results.csv", OOF_FILE) if (root / name).exists()]
        self._say(f"results: {', '.join(map(str, files))}; curves: tensorboard --logdir {root}")
        return result

    def _say(self, line: str) -> None:
        """Print ``line`` on rank 0 when ``verbose``: what a user running a cross-validation wants to read."""
        if self.verbose and _is_rank_zero():
            print(line, flush=True)

    # ------------------------------------------------------------------------------------------ internals
    def _fingerprint(
        self, core: nn.Module, trainer_kwargs: Mapping[str, Any] | None, trainer_factory: TrainerFactory | None
    ) -> dict[str, Any]:
        """What a finished fold's results depend on besides the folds and the starting weights, as plain strings."""
        kwargs = {k: v for k, v in (trainer_kwargs or {}).items() if k != "callbacks"}
        callbacks = (trainer_kwargs or {}).get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        return {
            "model": f"{type(core).__module__}.{type(core).__qualname__}",
            "hparams": _stable_repr(dict(getattr(core, "hparams", {}) or {})),
            "trainer_kwargs": _stable_repr(kwargs),
            "callbacks": [type(cb).__qualname__ for cb in callbacks],
            "trainer_factory": None if trainer_factory is None else getattr(trainer_factory, "__qualname__", "?"),
            "reset": self.reset,
            "seed": self.seed,
            "seed_folds": self.seed_folds,
        }

    def _check_finished_folds(self, root: Path, plan: FoldPlan, snapshot_checksum: str) -> None:
        """Finished folds are reused only if they started from the same weights (snapshot mode)."""
        if self.reset != "snapshot":
            return  # reinit: the weights come from `seed + k`, which the manifest's fingerprint pins
        for k in range(plan.n_splits):
            done = root / f"fold_{k}" / FOLD_RESULT
            if not done.exists():
                continue
            stored = json.loads(done.read_text()).get("weights_checksum")
            if stored is not None and stored != snapshot_checksum:
                raise ValueError(
                    f"{done} was trained from weights with checksum {str(stored)[:12]}, but the model given now "
                    f"has checksum {snapshot_checksum[:12]}: its results would be reused for another model. Seed "
                    "before building the model (`lightning.seed_everything`) so that a rerun starts from the same "
                    "weights, use another `root_dir`, or `overwrite=True` to delete that cross-validation."
                )

    def _pin_manifest(self, root: Path, plan: FoldPlan, config: dict[str, Any]) -> None:
        path = root / MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
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
            if _is_rank_zero():
                self._clear(root)
        if _is_rank_zero():
            write_json_atomic(path, {**plan.to_manifest(), "config": config})

    @staticmethod
    def _clear(root: Path) -> None:
        for child in root.iterdir():
            if child.is_dir() and (child.name.startswith("fold_") or child.name == "summary"):
                shutil.rmtree(child)
            elif child.name in (MANIFEST, OOF_FILE, "cv_results.json", "cv_results.csv"):
                child.unlink()

    @staticmethod
    def _callback_modes(trainer_kwargs: Mapping[str, Any] | None) -> dict[str, str]:
        modes: dict[str, str] = {}
        for cb in (trainer_kwargs or {}).get("callbacks") or []:
            if isinstance(cb, ModelCheckpoint | EarlyStopping) and cb.monitor:
                modes[cb.monitor] = cb.mode
        return modes

    def _reset_weights(self, k: int, model: nn.Module, resetter: WeightReset) -> str:
        resetter.restore(model)
        if self.reset == "snapshot":
            checksum = resetter.verify(model)
        else:
            try:
                reinit_parameters(model, self.seed + k)
            except WeightResetError:
                resetter.restore(model)
                raise
            checksum = weights_checksum(model)
        _reset_metric_states(unwrap_compiled(model))
        return checksum

    def _make_trainer(
        self,
        k: int,
        fold_dir: Path,
        trainer_kwargs: Mapping[str, Any] | None,
        trainer_factory: TrainerFactory | None,
        purge_step: int | None,
        seen: list[object],
    ) -> pl.Trainer:
        if trainer_factory is not None:
            trainer = trainer_factory(k)
            if not isinstance(trainer, pl.Trainer):
                raise TypeError(f"`trainer_factory({k})` returned {type(trainer).__name__}, not a Trainer.")
            used: list[object] = [trainer, *getattr(trainer, "callbacks", []), *trainer.loggers]
            reused = [type(o).__name__ for o in used if any(o is s for s in seen)]
            if reused:
                raise ValueError(
                    f"`trainer_factory({k})` returned objects an earlier fold used ({reused}); state would leak "
                    "between folds: build a new Trainer, new callbacks and new loggers on every call."
                )
            seen.extend(used)
            return trainer
        kwargs = dict(trainer_kwargs or {})
        callbacks = kwargs.pop("callbacks", None) or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        fold_callbacks = [copy.deepcopy(cb) for cb in callbacks]
        for cb in fold_callbacks:
            if isinstance(cb, ModelCheckpoint):
                cb.dirpath = str(Path(cb.dirpath) / f"fold_{k}") if cb.dirpath else str(fold_dir / "checkpoints")
        logger: Any = kwargs.pop("logger", True)
        if logger is None or logger is True:
            extra: dict[str, Any] = {} if purge_step is None else {"purge_step": purge_step}
            logger = TensorBoardLogger(
                save_dir=str(fold_dir.parent), name="", version=fold_dir.name, default_hp_metric=False, **extra
            )
        kwargs.setdefault("default_root_dir", str(fold_dir))
        return pl.Trainer(callbacks=fold_callbacks, logger=logger, **kwargs)

    def _run_fold(
        self,
        k: int,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        dataset: Any,
        plan: FoldPlan,
        resetter: WeightReset,
        trainer_kwargs: Mapping[str, Any] | None,
        trainer_factory: TrainerFactory | None,
        modes: dict[str, str],
        seen: list[object],
        predict: bool,
    ) -> FoldResult:
        fold_dir = Path(self.root_dir) / f"fold_{k}"
        start = time.perf_counter()
        if self.seed_folds:
            pl.seed_everything(self.seed + k, workers=True, verbose=False)
        checksum = self._reset_weights(k, model, resetter)
        restored = time.perf_counter()

        resume = fold_dir / "resume" / "last.ckpt"
        ckpt_path: str | None = None
        purge_step: int | None = None
        if self.resume_checkpoints and resume.exists():
            # Checked here, in the driver, with a clear error; then Lightning loads it with weights_only=True too.
            load_torch(resume, "resume checkpoint", mmap=True)
            ckpt_path = str(resume)
            sidecar = resume.with_suffix(".json")
            # Lightning logged up to step global_step - 1 before that checkpoint: TensorBoard drops what the failed
            # attempt logged from global_step on, so every step appears once.
            purge_step = int(json.loads(sidecar.read_text())["global_step"]) if sidecar.exists() else None
            log.info("CrossValidator: fold %d resumes from %s", k, resume)
        elif fold_dir.exists() and _is_rank_zero():
            shutil.rmtree(fold_dir)  # an attempt that left no checkpoint: start the fold clean

        trainer = self._make_trainer(k, fold_dir, trainer_kwargs, trainer_factory, purge_step, seen)
        monitor = FoldMonitor(k, plan.hash, checksum, str(fold_dir / "history.json"), str(fold_dir / KEPT_FILE))
        # The fold's DDP processes (ddp_spawn workers) exit right after it: without this, gloo may abort them.
        internal: list[Callback] = [monitor, DestroyProcessGroupAtExit()]
        if self.resume_checkpoints:
            internal.append(ResumeCheckpoint(str(resume)))
        if predict:
            internal.append(OOFPredictor(str(fold_dir / "oof_parts")))
        getattr(trainer, "callbacks").extend(internal)  # noqa: B009  (set in Trainer.__init__, untyped)
        fold_data = FoldDataModule(datamodule, dataset, plan.train[k], plan.val[k])

        trainer.fit(model, datamodule=fold_data, ckpt_path=ckpt_path, weights_only=True)
        if not trainer.state.finished:
            raise RuntimeError(f"fold {k} did not finish (trainer status {trainer.state.status}); rerun to resume.")
        fitted = time.perf_counter()

        core = unwrap_compiled(model)
        model_path = fold_dir / "model.pt"
        if _is_rank_zero():
            save_torch_atomic(core.state_dict(), model_path)
        history = self._read_history(fold_dir, monitor)
        # A fold restored from a checkpoint written after its last epoch runs no epoch and logs nothing, so
        # `callback_metrics` is empty: the last recorded epoch (restored with FoldMonitor's state) holds the values.
        last = {**(history[-1]["metrics"] if history else {}), **scalar_metrics(dict(trainer.callback_metrics))}
        best, best_epoch = best_of(history, modes)
        checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        best_path = checkpoints[0].best_model_path if checkpoints and checkpoints[0].best_model_path else None

        predict_seconds = 0.0
        if predict and _is_rank_zero():
            predict_seconds = self._merge_fold_oof(fold_dir, plan.val[k])
        validated = time.perf_counter()
        kept = self._validate_kept(trainer, model, fold_data)
        kept_epoch = self._read_kept_epoch(fold_dir, monitor)
        end = time.perf_counter()
        return FoldResult(
            fold=k,
            n_train=len(plan.train[k]),
            n_val=len(plan.val[k]),
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
        )

    @staticmethod
    def _validate_kept(trainer: pl.Trainer, model: pl.LightningModule, fold_data: FoldDataModule) -> dict[str, float]:
        """Validate the model the fold kept (after an EarlyStopping restore), once, with the fold's own Trainer: the
        metrics of the weights that are saved, ensembled and made the out-of-fold predictions. Not logged: the
        fold's curves keep one point per epoch."""
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

    @staticmethod
    def _read_kept_epoch(fold_dir: Path, monitor: FoldMonitor) -> int | None:
        path = fold_dir / KEPT_FILE
        if path.exists():  # written by rank 0, wherever that ran (ddp_spawn workers included)
            return json.loads(path.read_text()).get("kept_epoch")
        return monitor.kept_epoch

    @staticmethod
    def _read_history(fold_dir: Path, monitor: FoldMonitor) -> list[dict[str, Any]]:
        path = fold_dir / "history.json"
        if path.exists():  # written by rank 0, wherever that ran (ddp_spawn workers included)
            return list(json.loads(path.read_text()))
        return list(monitor.history)

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

    @staticmethod
    def _merge_fold_oof(fold_dir: Path, val_idx: np.ndarray) -> float:
        """Merge the ranks' prediction files into ``fold_dir/oof.pt``; return rank 0's prediction seconds."""
        parts_dir = fold_dir / "oof_parts"
        parts = [load_torch(p, "prediction file") for p in sorted(parts_dir.glob("oof_rank*.pt"))]
        parts = [p for p in parts if p["predictions"] is not None]
        if not parts:
            raise RuntimeError(f"no out-of-fold predictions were written to {parts_dir}.")
        positions = np.concatenate([p["positions"].numpy() for p in parts])
        predictions = concat_rows([p["predictions"] for p in parts])
        index = val_idx[positions]
        # DistributedSampler pads by repeating samples: keep each dataset index once, in dataset order.
        unique, first = np.unique(index, return_index=True)
        missing = np.setdiff1d(val_idx, unique)
        if missing.size:
            raise RuntimeError(f"{fold_dir.name}: no prediction for validation samples {missing[:10].tolist()}.")
        merged = {"index": torch.from_numpy(unique), "predictions": take_rows(predictions, first)}
        save_torch_atomic(merged, fold_dir / "oof.pt")
        shutil.rmtree(parts_dir)
        return float(parts[0].get("seconds", 0.0))

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
