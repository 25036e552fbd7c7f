"""``SetEpoch``: the fix for the most common streaming shuffle bug, shipped.

Lightning calls ``set_epoch(epoch)`` on a train loader's ``sampler`` and on ``batch_sampler.sampler``, and on nothing
else. A Hugging Face ``datasets.IterableDataset`` reshuffles its shards and buffer from its epoch, a litdata
``StreamingDataset`` read through a plain ``DataLoader`` with workers from its own, a webdataset-style or user
``IterableDataset``, a map-style data set with epoch-dependent augmentation, and a bucketing batch sampler all have a
``set_epoch`` that Lightning never calls: every epoch then replays epoch 0's order, which ``ShuffleAudit`` reports as
``order_unchanged``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch.utils.data import BatchSampler, ChainDataset, ConcatDataset, DataLoader, Subset
from typing_extensions import override

from epochkit._callback import hook_process_dataloader, unhook_process_dataloader
from epochkit._state import check_state, integer, mapping_of, remember_source
from epochkit.audit.recording import RecordingSampler, train_loaders

log = logging.getLogger("epochkit.audit")


def _unwrap(obj: Any) -> Any:
    return obj.inner if isinstance(obj, RecordingSampler) else obj


def _has_set_epoch(obj: Any) -> bool:
    return obj is not None and callable(getattr(obj, "set_epoch", None))


def _shares_epoch_with_workers(dataset: Any) -> bool:
    """Hugging Face streams keep their epoch in a shared-memory tensor that persistent workers see."""
    return type(dataset).__module__.split(".")[0] == "datasets"


def _datasets(dataset: Any) -> list[Any]:
    """``dataset`` when it has ``set_epoch``, else the data sets a torch ``Subset``/``ConcatDataset``/``ChainDataset``
    wraps that have one."""
    if _has_set_epoch(dataset):
        return [dataset]
    if isinstance(dataset, Subset):
        return _datasets(dataset.dataset)
    if isinstance(dataset, ConcatDataset | ChainDataset):
        return [d for inner in dataset.datasets for d in _datasets(inner)]
    return []


def _set_sampler_epochs(loader: object, epoch: int) -> None:
    """``set_epoch(epoch)`` on the samplers Lightning reaches (``loader.sampler``, ``loader.batch_sampler.sampler``),
    with the epoch Lightning itself gives them, but before the loader's state is restored and its first iterator
    starts: Lightning does both first on a resume (a mid-epoch one, and an epoch-end one with workers, Lightning
    #21938), so a ``DistributedSampler`` would otherwise draw the permutation of the epoch it was built with."""
    if not isinstance(loader, DataLoader):
        return
    batch_sampler = _unwrap(loader.batch_sampler)
    samplers = {id(s): s for s in (_unwrap(loader.sampler), getattr(batch_sampler, "sampler", None)) if s is not None}
    for sampler in samplers.values():
        if _has_set_epoch(sampler):
            sampler.set_epoch(epoch)


def epoch_targets(loader: Any) -> list[tuple[str, Any]]:
    """What :class:`SetEpoch` calls ``set_epoch`` on for a train loader, as ``(role, object)``: the data set (or the
    data sets a ``Subset``/``ConcatDataset`` wraps) and a custom batch sampler, when they have ``set_epoch`` and
    Lightning does not already call it (it calls ``loader.sampler`` and ``loader.batch_sampler.sampler``). A litdata
    ``StreamingDataLoader`` sets its data set's epoch itself, so its data set is left alone.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> class Augmented(TensorDataset):
        ...     def set_epoch(self, epoch): self.epoch = epoch
        >>> loader = DataLoader(Augmented(torch.arange(8)), batch_size=4, shuffle=True)
        >>> [(role, type(obj).__name__) for role, obj in epoch_targets(loader)]
        [('dataset', 'Augmented')]
        >>> epoch_targets(DataLoader(TensorDataset(torch.arange(8)), batch_size=4, shuffle=True))
        []
    """
    if not isinstance(loader, DataLoader):
        return []
    reached = {id(_unwrap(loader.sampler))}
    batch_sampler = _unwrap(loader.batch_sampler)
    if batch_sampler is not None:
        reached.add(id(getattr(batch_sampler, "sampler", None)))
    found: dict[int, tuple[str, Any]] = {}
    if type(loader).__module__.split(".")[0] != "litdata":
        for dataset in _datasets(loader.dataset):
            found.setdefault(id(dataset), ("dataset", dataset))
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler and _has_set_epoch(batch_sampler):
        found.setdefault(id(batch_sampler), ("batch_sampler", batch_sampler))
    return [target for key, target in found.items() if key not in reached]


class SetEpoch(Callback):
    """Calls ``set_epoch(epoch)`` on every train data set and batch sampler that has one and that Lightning does not
    reach, exactly once per epoch, before the epoch's data loader iterator (and its workers) starts.

    Lightning calls ``set_epoch`` on the train loader's ``sampler`` and ``batch_sampler.sampler`` only. This callback
    covers the rest (see :func:`epoch_targets`): Hugging Face ``datasets.IterableDataset`` streams (``.shuffle()``
    reshuffles from the epoch), litdata ``StreamingDataset`` in a plain ``DataLoader``, webdataset-style and user
    ``IterableDataset``\\ s, map-style data sets with epoch-dependent augmentation, and custom batch samplers
    (bucketing, length grouping). Every train loader of a ``CombinedLoader`` is covered, and so is a loader swapped in
    by ``reload_dataloaders_every_n_epochs``.

    The epoch is Lightning's own (``trainer.current_epoch``, the value it passes to samplers), set where Lightning
    sets its samplers' epoch: when the train loader is prepared (the first epoch, a reload, and a resumed fit, also
    mid-epoch) and at every epoch start. So a resumed run presents the orders of an uninterrupted one. When a train
    loader is prepared it also sets the epoch of the samplers Lightning reaches (the same value Lightning sets a
    moment later): on a resume Lightning restores the loader's state and starts its iterator first, so a
    ``DistributedSampler`` would draw the order of the epoch it was built with (epoch 0 in a fresh process; Lightning
    #21938, and the rest of the cut epoch on a mid-epoch resume of a ``StatefulDataLoader``). Every rank
    calls it on its own objects with the same epoch; nothing is communicated.

    Workers: without ``persistent_workers`` each epoch's workers are started after the call and copy the updated
    object. With ``persistent_workers=True`` the workers keep the copy made when they first started, so only a
    data set that shares its epoch with them sees the update: Hugging Face streams do (a shared-memory tensor);
    for any other data set this callback warns once and the fix is ``persistent_workers=False``.

    Its ``state_dict`` records the last epoch set on each target (``{"epochs": {"dataset:IterableDataset": 4}}``).

    Example:
        >>> trainer = pl.Trainer(callbacks=[SetEpoch()])  # doctest: +SKIP
    """

    # State made during fit, declared for type checkers.
    epochs_: dict[str, int]
    _patched_: tuple[Any, Any] | None
    _done_: dict[int, tuple[Any, int]]
    _warned_: set[int]
    _reported_: bool

    def __init__(self) -> None:
        self._reset_state()

    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.epochs_ = {}
        self._patched_ = None
        self._done_ = {}
        self._warned_ = set()
        self._reported_ = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_state()

        # Lightning sets the samplers' epoch right after the strategy processes a train loader, before the first
        # iterator is made (first epoch, reloads, resumes): the data set's epoch is set at the same moment.
        def set_loader_epoch(loader: object) -> None:
            progress = trainer.fit_loop.epoch_progress.current
            epoch = int(getattr(progress, "processed", trainer.current_epoch))
            _set_sampler_epochs(loader, epoch)
            self._apply(trainer, [loader], epoch)

        self._patched_ = hook_process_dataloader(trainer, set_loader_epoch)

    @override
    def state_dict(self) -> dict[str, Any]:
        """What was set: ``{"epochs": {"<role>:<class>": last epoch set}}`` (the epoch itself always comes from the
        Trainer, so a resumed fit needs nothing from here; it is kept for the record)."""
        return {"epochs": dict(self.epochs_)}

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        remember_source(self, trainer)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state(
            self, state_dict, {"epochs": (mapping_of(integer(0)), "a mapping of loaders to epochs (ints >= 0)")}
        )
        self.epochs_ = dict(state_dict.get("epochs", {}))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = [loader for _, _, loader in train_loaders(trainer.train_dataloader)]
        self._apply(trainer, loaders, trainer.current_epoch)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._undo()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._undo()

    def _undo(self) -> None:
        unhook_process_dataloader(self._patched_)
        self._patched_ = None

    def _apply(self, trainer: pl.Trainer, loaders: list[Any], epoch: int) -> None:
        targets = [(loader, role, obj) for loader in loaders for role, obj in epoch_targets(loader)]
        if not targets and not self._reported_ and trainer.is_global_zero:
            self._reported_ = True
            log.warning(
                "SetEpoch: no train data set or batch sampler has a set_epoch that Lightning does not already call "
                "(Lightning calls loader.sampler.set_epoch and loader.batch_sampler.sampler.set_epoch): nothing to do."
            )
        for loader, role, obj in targets:
            done = self._done_.get(id(obj))
            if done is not None and done[0] is obj and done[1] == epoch:
                continue  # exactly once per epoch, however many hooks reach it
            obj.set_epoch(epoch)
            self._done_[id(obj)] = (obj, epoch)
            self.epochs_[f"{role}:{type(obj).__qualname__}"] = epoch
            persistent = bool(getattr(loader, "persistent_workers", False)) and loader.num_workers > 0
            if (
                role == "dataset"
                and persistent
                and not _shares_epoch_with_workers(obj)
                and id(obj) not in self._warned_
            ):
                self._warned_.add(id(obj))
                if trainer.is_global_zero:
                    warnings.warn(
                        f"SetEpoch: the train loader has persistent_workers=True, so its {loader.num_workers} workers "
                        f"keep the copy of {type(obj).__qualname__} they started with and never see set_epoch(epoch); "
                        "set persistent_workers=False (Hugging Face datasets share the epoch with workers and are "
                        "fine).",
                        UserWarning,
                        stacklevel=2,
                    )
