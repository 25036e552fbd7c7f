"""Small labelled data and the realistic sampler bugs the audit must catch, for a real Trainer.

The model is the shared :class:`DigitsClassifier` (64 features, 10 classes); the data is seeded random features with
integer labels, so each fit takes a fraction of a second. Everything here is module-level so ``ddp_spawn`` can pickle
it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from examples.shuffle_bug import OnceShuffledSampler
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset, get_worker_info

from tests.helpers import DigitsClassifier, quiet_trainer

FEATURES = 64


def make_tensors(n: int, classes: int, seed: int, sort_by_label: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    if sort_by_label:
        order = torch.argsort(y, stable=True)
        x, y = x[order], y[order]
    return x, y


class LabelledSet(TensorDataset):
    """A TensorDataset of ``(x, y)`` that exposes ``targets`` like torchvision data sets do."""

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]


class EpochAwareSet(TensorDataset):
    """A map-style data set with a dataset-level ``set_epoch`` (e.g. for epoch-dependent augmentation)."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class StreamSet(IterableDataset):
    """An iterable data set; ``shard=False`` is the classic bug: every worker and rank streams everything."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, shard: bool) -> None:
        self.x, self.y, self.shard = x, y, shard

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, step = 0, 1
        info = get_worker_info()
        if self.shard and info is not None:
            start, step = info.id, info.num_workers
        for i in range(start, len(self.y), step):
            yield self.x[i], self.y[i]


class FixedPermutationSampler(OnceShuffledSampler):
    """Bug: shuffles once, in ``__init__``, and never reseeds: the same order every epoch. The example's sampler
    (``examples/shuffle_bug.py``), under the name the audit's messages in these tests show."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__(n, seed)


class RotatingSampler(Sampler[int]):
    """Bug: "reshuffles" by rotating one fixed permutation; the shift (about 0.21 n) keeps Spearman near 0."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        self.shift = round(0.2113 * n)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        k = (self.epoch * self.shift) % len(self.order)
        return iter(self.order[k:] + self.order[:k])

    def __len__(self) -> int:
        return len(self.order)


class WithReplacementSampler(Sampler[int]):
    """Bug: draws indices with replacement (randint) where a permutation was meant."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randint(0, self.n, (self.n,), generator=self.gen).tolist())

    def __len__(self) -> int:
        return self.n


class ShuffledBatchesSampler(Sampler[list[int]]):
    """Bug: forms the batches once and only shuffles the order of the batches each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        self.batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
        self.gen = torch.Generator().manual_seed(seed + 1)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.batches), generator=self.gen).tolist()
        return iter([self.batches[i] for i in order])

    def __len__(self) -> int:
        return len(self.batches)


class ClassBlockSampler(Sampler[list[int]]):
    """Bug: every batch holds one class (a "balanced" class-by-class sampler), batches in random order."""

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.batches = []
        for c in labels.unique().tolist():
            idx = torch.nonzero(labels == c).flatten().tolist()
            self.batches += [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([self.batches[i] for i in torch.randperm(len(self.batches), generator=self.gen).tolist()])

    def __len__(self) -> int:
        return len(self.batches)


def rank_seeded_sampler(dataset: Dataset, rank: int) -> Sampler[int]:
    """Bug: a DistributedSampler seeded with the rank, so every rank draws its own permutation."""
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=rank)  # type: ignore[arg-type]


class AuditDataModule(pl.LightningDataModule):
    """Seeded ``(x, y)`` classification data with a pluggable train loader.

    Args:
        n: Training samples.
        classes: Number of label values.
        batch_size: Batch size.
        seed: Seed of the data.
        shuffle: DataLoader ``shuffle`` when no sampler is given.
        kind: ``"tensor"`` (``LabelledSet``), ``"epoch_aware"``, ``"stream"``, ``"sharded_stream"`` or
            ``"epoch_stream"`` (:class:`EpochStream`).
        sort_by_label: Store the samples sorted by label.
        sampler: ``sampler(n, dataset, trainer)`` -> a sampler, or None.
        batch_sampler: ``batch_sampler(n, dataset, batch_size)`` -> a batch sampler, or None.
        loader_kwargs: More DataLoader arguments (``num_workers``, ``drop_last``, ``persistent_workers``).
    """

    def __init__(
        self,
        n: int = 192,
        classes: int = 4,
        batch_size: int = 16,
        seed: int = 0,
        shuffle: bool = True,
        kind: str = "tensor",
        sort_by_label: bool = False,
        sampler: Callable[..., Any] | None = None,
        batch_sampler: Callable[..., Any] | None = None,
        **loader_kwargs: Any,
    ) -> None:
        super().__init__()
        self.n, self.classes, self.batch_size, self.seed = n, classes, batch_size, seed
        self.shuffle, self.kind, self.sort_by_label = shuffle, kind, sort_by_label
        self.sampler, self.batch_sampler, self.loader_kwargs = sampler, batch_sampler, loader_kwargs

    def setup(self, stage: str) -> None:
        x, y = make_tensors(self.n, self.classes, self.seed, self.sort_by_label)
        if self.kind == "tensor":
            self.train_set: Dataset = LabelledSet(x, y)
        elif self.kind == "epoch_aware":
            self.train_set = EpochAwareSet(x, y)
        elif self.kind == "epoch_stream":
            self.train_set = EpochStream(x, y, self.seed)
        else:
            self.train_set = StreamSet(x, y, shard=self.kind == "sharded_stream")

    def train_dataloader(self) -> DataLoader:
        kwargs = dict(self.loader_kwargs)
        if self.batch_sampler is not None:
            bs = self.batch_sampler(self.n, self.train_set, self.batch_size)
            return DataLoader(self.train_set, batch_sampler=bs, **kwargs)
        if self.sampler is not None:
            kwargs["sampler"] = self.sampler(self.n, self.train_set, self.trainer)
        elif self.kind in ("tensor", "epoch_aware"):
            kwargs["shuffle"] = self.shuffle
        return DataLoader(self.train_set, batch_size=self.batch_size, **kwargs)


def model() -> DigitsClassifier:
    return DigitsClassifier(hidden=16)


def fit(callbacks: list[pl.Callback], dm: AuditDataModule, ckpt_path: Any = None, **trainer_kwargs: Any) -> pl.Trainer:
    """A quick single-process fit with no validation, logger or checkpoint unless asked for."""
    trainer = quiet_trainer(None, callbacks, **{"max_epochs": 3, "limit_val_batches": 0, **trainer_kwargs})
    trainer.fit(model(), datamodule=dm, ckpt_path=ckpt_path)
    return trainer


# Sampler factories (module-level so DDP can pickle them).
def fixed_permutation(n: int, dataset: Dataset, trainer: pl.Trainer) -> Sampler[int]:
    return FixedPermutationSampler(n)


def rotating(n: int, dataset: Dataset, trainer: pl.Trainer) -> Sampler[int]:
    return RotatingSampler(n)


def with_replacement(n: int, dataset: Dataset, trainer: pl.Trainer) -> Sampler[int]:
    return WithReplacementSampler(n)


def rank_seeded(n: int, dataset: Dataset, trainer: pl.Trainer) -> Sampler[int]:
    return rank_seeded_sampler(dataset, trainer.global_rank)


def shuffled_batches(n: int, dataset: Dataset, batch_size: int) -> Sampler[list[int]]:
    return ShuffledBatchesSampler(n, batch_size)


def class_blocks(n: int, dataset: Any, batch_size: int) -> Sampler[list[int]]:
    return ClassBlockSampler(dataset.targets, batch_size)


class HalfWithRepeatsBatchSampler(Sampler[list[int]]):
    """Bug: a batch sampler with no ``sampler`` attribute that yields half the data plus 16 repeats."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size

    def _order(self) -> list[int]:
        perm = torch.randperm(self.n // 2).tolist()
        return perm + perm[:16]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        return iter([order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)])

    def __len__(self) -> int:
        return -(-(self.n // 2 + 16) // self.batch_size)


class HalfWithRepeatsSampler(HalfWithRepeatsBatchSampler):
    """The same bug as a per-sample sampler: ``len()`` is 96 on 160 samples."""

    def __init__(self, n: int) -> None:
        super().__init__(n, 1)

    def __iter__(self) -> Iterator[int]:  # type: ignore[override]
        return iter(self._order())

    def __len__(self) -> int:
        return self.n // 2 + 16


def oversampling(n: int, dataset: Any, trainer: pl.Trainer) -> Sampler[int]:
    """Healthy: a RandomSampler without replacement drawing every sample twice per epoch."""
    from torch.utils.data import RandomSampler

    return RandomSampler(dataset, num_samples=2 * n)


def half_with_repeats(n: int, dataset: Any, trainer: pl.Trainer) -> Sampler[int]:
    return HalfWithRepeatsSampler(n)


def half_with_repeats_batches(n: int, dataset: Any, batch_size: int) -> Sampler[list[int]]:
    return HalfWithRepeatsBatchSampler(n, batch_size)


class EpochStream(IterableDataset):
    """A user stream that reshuffles from ``(seed, epoch)`` in ``__iter__`` and splits its rows across workers: it
    needs someone to call ``set_epoch``. Records the epoch each iteration in this process started with."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
        self.x, self.y, self.seed = x, y, seed
        self.epoch = 0
        self.set_calls: list[int] = []
        self.started: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.set_calls.append(epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.started.append(self.epoch)
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        info = get_worker_info()
        start, step = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in order[start::step].tolist():
            yield self.x[i], self.y[i]


def lengths_of(n: int, seed: int = 0) -> torch.Tensor:
    """Seeded sequence lengths (what length-grouped and bucketed batching sort by)."""
    return torch.randint(1, 512, (n,), generator=torch.Generator().manual_seed(seed + 7))


class LengthGroupedSampler(Sampler[int]):
    """HF Trainer's ``group_by_length``: a fresh permutation cut into megabatches of ``mult * batch_size``, each
    sorted by length, longest first; reseeded from ``(seed, epoch)``."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, mult: int = 50, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.mult, self.seed = lengths, batch_size, mult, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=gen)
        size = self.mult * self.batch_size
        out: list[int] = []
        for start in range(0, len(perm), size):
            mega = perm[start : start + size]
            out += mega[torch.argsort(self.lengths[mega], descending=True, stable=True)].tolist()
        return iter(out)

    def __len__(self) -> int:
        return len(self.lengths)


class BucketBatchSampler(Sampler[list[int]]):
    """Fixed length buckets, each shuffled and cut into batches, the batches in a random order; reseeded from
    ``(seed, epoch)`` through its own ``set_epoch``, which Lightning never calls on a batch sampler."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, buckets: int = 4, seed: int = 0) -> None:
        order = torch.argsort(lengths, stable=True)
        self.buckets = [chunk for chunk in torch.tensor_split(order, buckets) if len(chunk)]
        self.batch_size, self.seed = batch_size, seed
        self.epoch = 0
        self.set_calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.set_calls.append(epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        batches = []
        for bucket in self.buckets:
            members = bucket[torch.randperm(len(bucket), generator=gen)].tolist()
            batches += [members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        return iter([batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()])

    def __len__(self) -> int:
        return sum(-(-len(b) // self.batch_size) for b in self.buckets)


def length_grouped(n: int, dataset: Dataset, trainer: pl.Trainer) -> Sampler[int]:
    return LengthGroupedSampler(lengths_of(n), batch_size=8)


def bucketed(n: int, dataset: Dataset, batch_size: int) -> Sampler[list[int]]:
    return BucketBatchSampler(lengths_of(n), batch_size)
