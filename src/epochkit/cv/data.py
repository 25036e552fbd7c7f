"""How the cross-validator gets at the user's data, and the per-fold DataModule over ``Subset``s of it.

The DataModule exposes its training dataset after ``setup("fit")`` in one of these ways, tried in order:

1. a method ``cv_dataset()`` returning it;
2. an attribute ``train_set``, ``train_dataset``, ``dataset_train`` or ``train_data``.

Each fold's loaders are the user's own ``train_dataloader()`` / ``val_dataloader()`` rebuilt over the fold's
``Subset`` with the same settings (batch size, workers, ``collate_fn``, ``pin_memory``, ``drop_last``, worker init,
generator, prefetching...). Validation and prediction loaders never shuffle and never drop the last batch. For loaders
that cannot be rebuilt that way (a custom sampler or batch sampler), give the DataModule a method
``cv_dataloader(dataset, stage)`` that builds one for the fold's ``Subset`` ``dataset``. ``stage`` is one of:

- ``"train"``: the fold's training loader (it should shuffle: a training loader that visits its samples in order is
  warned about);
- ``"val"``: the fold's validation loader (Lightning's name ``"validate"`` compares equal to it);
- ``"predict"``: the loader of the out-of-fold predictions over the validation subset (in order, once each).

``stage`` is a :class:`FoldStage`, a ``str`` that refuses to be compared with any other name: ``stage == "fit"`` (a
guess that would hand the training loop an evaluation loader) raises a ``ValueError`` naming the stages.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler, Subset

__all__ = [
    "DATASET_ATTRIBUTES",
    "FoldDataModule",
    "FoldStage",
    "find_labels",
    "find_training_dataset",
    "per_sample_values",
    "rebuild_loader",
]

DATASET_ATTRIBUTES = ("train_set", "train_dataset", "dataset_train", "train_data")
LABEL_ATTRIBUTES = ("targets", "labels", "y")


class FoldStage(str):
    """The ``stage`` given to a DataModule's ``cv_dataloader(dataset, stage)``: ``"train"``, ``"val"`` or
    ``"predict"``. Compared with any other name it raises, so a guessed name cannot silently pick the wrong loader;
    Lightning's ``"validate"`` equals ``"val"``.

    Example:
        >>> stage = FoldStage("val")
        >>> stage == "val", stage == "validate", stage != "train", stage in ("train", "val")
        (True, True, True, True)
        >>> FoldStage("train") == "fit"
        Traceback (most recent call last):
        ...
        ValueError: cv_dataloader(dataset, stage): stage is 'train', compared with 'fit', which is no stage; the stages are 'train', 'val' (or Lightning's 'validate') and 'predict'.
    """  # noqa: E501

    NAMES: ClassVar[tuple[str, ...]] = ("train", "val", "predict")
    ALIASES: ClassVar[dict[str, str]] = {"validate": "val"}

    def __new__(cls, name: str) -> FoldStage:
        if name not in cls.NAMES:
            raise ValueError(f"FoldStage must be one of {cls.NAMES}, got {name!r}.")
        return super().__new__(cls, name)

    def _name(self, other: object) -> str:
        if not isinstance(other, str):
            return ""
        name = self.ALIASES.get(str(other), str(other))
        if name not in self.NAMES:
            raise ValueError(
                f"cv_dataloader(dataset, stage): stage is {str(self)!r}, compared with {str(other)!r}, which is no "
                "stage; the stages are 'train', 'val' (or Lightning's 'validate') and 'predict'."
            )
        return name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self._name(other) == str(self)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


def per_sample_values(dataset: Any, argument: str, name: str) -> Any:
    """The per-sample values that ``labels=``/``groups=`` name: a dataset attribute, a column of a Hugging Face
    ``datasets.Dataset``, or a key of the dataset's samples when they are dicts (each sample is read once).

    Raises:
        ValueError: If ``name`` is none of these, listing the attributes, columns or sample keys there are.

    Example:
        >>> per_sample_values([{"text": "a", "label": 1}, {"text": "b", "label": 0}], "labels", "label").tolist()
        [1, 0]
    """
    value = getattr(dataset, name, None)
    if value is not None and not callable(value):
        return value
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list) and all(isinstance(c, str) for c in columns):  # a Hugging Face datasets.Dataset
        if name in columns:
            return _as_array(list(dataset[name]))
        have = f"its columns are {columns}"
    else:
        first = dataset[0] if len(dataset) else None
        if isinstance(first, Mapping):
            if name in first:
                return _as_array([dataset[i][name] for i in range(len(dataset))])
            have = f"its samples are dicts with the keys {sorted(map(str, first))}"
        else:
            names = vars(dataset) if hasattr(dataset, "__dict__") else {}
            attributes = sorted(a for a in names if not a.startswith("_"))
            have = f"its attributes are {attributes}"
    raise ValueError(
        f"`{argument}={name!r}` names no attribute, column or sample key of the training dataset "
        f"({type(dataset).__name__}); {have}."
    )


def check_train_loader_shuffles(loader: Any, source: str) -> None:
    """Warn when a fold's training loader visits its samples in order (a ``SequentialSampler``), naming where it
    came from: every epoch of every fold would then see the same order. Looks at the sampler only; iterates
    nothing."""
    if not isinstance(loader, DataLoader):
        return
    sampler: Any = loader.sampler
    if loader.batch_size is None and loader.batch_sampler is not None:
        sampler = getattr(loader.batch_sampler, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        rank_zero_warn(
            f"CrossValidator: the folds' training loader, from {source}, does not shuffle (SequentialSampler): every "
            "epoch of every fold sees the samples in the same order. Shuffle it (`shuffle=True`, or a random "
            "sampler)" + (" for stage 'train'" if "cv_dataloader" in source else "") + " unless the order is meant."
        )


def find_training_dataset(datamodule: pl.LightningDataModule) -> Dataset:
    """The DataModule's training dataset (after ``setup("fit")``), see the module docstring.

    Raises:
        ValueError: If none is exposed, or it is not a map-style dataset with a length.
    """
    dataset: Any = None
    if callable(getattr(datamodule, "cv_dataset", None)):
        dataset = datamodule.cv_dataset()  # type: ignore[attr-defined]
        source = "cv_dataset()"
    else:
        for attr in DATASET_ATTRIBUTES:
            if getattr(datamodule, attr, None) is not None:
                dataset, source = getattr(datamodule, attr), attr
                break
    if dataset is None:
        raise ValueError(
            f"CrossValidator cannot find the training dataset of {type(datamodule).__name__}: after setup('fit') it "
            f"must have a `cv_dataset()` method or one of the attributes {list(DATASET_ATTRIBUTES)}."
        )
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"{type(datamodule).__name__}.{source} is a {type(dataset).__name__}; cross-validation needs a map-style "
            "dataset with `__len__` and `__getitem__` so that folds can be subsets of it."
        )
    return dataset


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def find_labels(dataset: Dataset) -> np.ndarray | None:
    """Per-sample labels the dataset already carries, or ``None``: ``targets``/``labels``/``y`` attributes, a
    ``TensorDataset``'s last tensor when it is 1-D, looked through ``Subset``s.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> find_labels(Subset(TensorDataset(torch.zeros(4, 2), torch.tensor([3, 1, 4, 1])), [2, 0])).tolist()
        [4, 3]
    """
    if isinstance(dataset, Subset):
        inner = find_labels(dataset.dataset)
        return None if inner is None else inner[np.asarray(dataset.indices)]
    for attr in LABEL_ATTRIBUTES:
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            arr = _as_array(values)
            if arr.ndim == 1 and len(arr) == len(dataset):  # type: ignore[arg-type]
                return arr
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, Sequence) and len(tensors) >= 2 and getattr(tensors[-1], "ndim", 0) == 1:
        return _as_array(tensors[-1])
    return None


# DataLoader settings carried over to the fold loaders (attribute name = constructor argument).
_LOADER_SETTINGS = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def rebuild_loader(template: DataLoader, dataset: Dataset, train: bool) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with ``template``'s settings; shuffled as the template for training,
    never shuffled and keeping the last batch otherwise.

    Raises:
        ValueError: If the template uses a custom sampler or batch sampler, which cannot be carried to a subset.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> base = DataLoader(TensorDataset(torch.arange(10)), batch_size=4, shuffle=True, drop_last=True)
        >>> fold = rebuild_loader(base, Subset(base.dataset, [0, 1, 2, 3, 4]), train=False)
        >>> fold.batch_size, isinstance(fold.sampler, SequentialSampler), fold.drop_last
        (4, True, False)
    """
    sampler = template.sampler
    custom_batch_sampler = template.batch_size is None and template.batch_sampler is not None
    if custom_batch_sampler or not isinstance(sampler, RandomSampler | SequentialSampler):
        raise ValueError(
            f"the DataModule's loader uses a custom {'batch sampler' if custom_batch_sampler else 'sampler'} "
            f"({type(template.batch_sampler if custom_batch_sampler else sampler).__name__}), which cannot be moved "
            "onto a fold's subset; give the DataModule a `cv_dataloader(dataset, stage)` method that builds the "
            "fold loaders."
        )
    if isinstance(sampler, RandomSampler) and (sampler.replacement or sampler._num_samples is not None):
        raise ValueError(
            "the DataModule's loader samples with replacement or a fixed `num_samples`; give the DataModule a "
            "`cv_dataloader(dataset, stage)` method that builds the fold loaders."
        )
    kwargs = {name: getattr(template, name) for name in _LOADER_SETTINGS if hasattr(template, name)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    shuffle = train and isinstance(sampler, RandomSampler)
    if not train:
        kwargs["drop_last"] = False
    return DataLoader(dataset, shuffle=shuffle, **kwargs)


class FoldDataModule(pl.LightningDataModule):
    """The user's DataModule seen through one fold: training and validation ``Subset``s of its training dataset.

    Batch-transfer hooks and ``state_dict`` go to the user's DataModule; any other attribute is looked up there too,
    so ``self.trainer.datamodule.num_classes`` in a module keeps working.
    """

    def __init__(
        self, datamodule: pl.LightningDataModule, dataset: Dataset, train_idx: np.ndarray, val_idx: np.ndarray
    ) -> None:
        super().__init__()
        self.datamodule = datamodule
        self.train_subset = Subset(dataset, train_idx.tolist())
        self.val_subset = Subset(dataset, val_idx.tolist())
        self.val_indices = np.asarray(val_idx, dtype=np.int64)
        self.train_indices = np.asarray(train_idx, dtype=np.int64)
        self._log_hyperparams = datamodule._log_hyperparams
        # The user's hyperparameters, so the loggers record them as for a plain fit.
        self._set_hparams(dict(datamodule.hparams_initial))
        self._hparams_initial = copy.deepcopy(self._hparams)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this object lacks; guard against recursion while unpickling.
        if name.startswith("__") or name == "datamodule" or "datamodule" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["datamodule"], name)

    def setup(self, stage: str) -> None:  # the user's DataModule was set up once, before the folds
        pass

    def _loader(self, stage: str) -> DataLoader:
        dm = self.datamodule
        subset = self.train_subset if stage == "train" else self.val_subset
        if callable(getattr(dm, "cv_dataloader", None)):
            loader = dm.cv_dataloader(subset, FoldStage(stage))  # type: ignore[attr-defined]
            if stage == "train":
                check_train_loader_shuffles(loader, f"{type(dm).__name__}.cv_dataloader(dataset, 'train')")
            return loader
        if stage != "train" and is_overridden("val_dataloader", dm):
            template = dm.val_dataloader()
            if isinstance(template, DataLoader):
                return rebuild_loader(template, subset, train=False)
        template = dm.train_dataloader()
        if not isinstance(template, DataLoader):
            raise ValueError(
                f"{type(dm).__name__}.train_dataloader() returned a {type(template).__name__}, not one DataLoader; "
                "give the DataModule a `cv_dataloader(dataset, stage)` method that builds the fold loaders."
            )
        if stage == "train":
            check_train_loader_shuffles(template, f"{type(dm).__name__}.train_dataloader()")
        return rebuild_loader(template, subset, train=stage == "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return self.datamodule.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)
