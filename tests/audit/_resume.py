"""Data modules for the resume tests: one small regression task behind every loader kind a resume treats differently
(torchdata's ``StatefulDataLoader`` over stateful and non-stateful samplers, a plain ``DataLoader``)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import BatchSampler as StatefulBatchSampler
from torchdata.stateful_dataloader.sampler import RandomSampler as StatefulRandomSampler

from epochkit.demo import DigitsDataModule

#: Loader kinds: a StatefulDataLoader over torchdata's RandomSampler, torch's RandomSampler with a generator, a
#: DistributedSampler (of one replica, or of the DDP process group's ranks), a batch sampler; a plain DataLoader over a
#: DistributedSampler or shuffling.
KINDS = (
    "torchdata_random",
    "torch_random_generator",
    "distributed",
    "batch_sampler",
    "plain_distributed",
    "plain",
    "ddp_distributed",
)


def train_loader(kind: str, data: TensorDataset, batch_size: int, workers: int = 0) -> Any:
    """A train loader of ``kind`` over ``data`` (every one seeded: the same order in every process)."""
    stateful: dict[str, Any] = {"num_workers": workers}
    if kind == "torchdata_random":
        sampler = StatefulRandomSampler(data, generator=torch.Generator().manual_seed(1))
        return StatefulDataLoader(data, batch_size=batch_size, sampler=sampler, **stateful)
    if kind == "torch_random_generator":
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(1))
        return StatefulDataLoader(data, batch_size=batch_size, sampler=sampler, **stateful)
    if kind in ("distributed", "plain_distributed"):
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=1)
        cls = StatefulDataLoader if kind == "distributed" else DataLoader
        return cls(data, batch_size=batch_size, sampler=sampler, **stateful)
    if kind == "batch_sampler":
        inner = StatefulRandomSampler(data, generator=torch.Generator().manual_seed(5))
        # torchdata's BatchSampler: its iterator saves the inner sampler's (torch's BatchSampler would be
        # fast-forwarded over a new permutation on a mid-epoch resume)
        batches = StatefulBatchSampler(inner, batch_size, drop_last=False)
        return StatefulDataLoader(data, batch_sampler=batches, **stateful)
    if kind == "plain":
        return DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers)
    if kind == "ddp_distributed":  # built in each DDP process: its replicas and rank are the process group's
        sampler = DistributedSampler(data, shuffle=True, seed=1)
        return StatefulDataLoader(data, batch_size=batch_size, sampler=sampler, **stateful)
    raise ValueError(kind)


class ResumeData(pl.LightningDataModule):
    """48 seeded regression samples, batches of 6 (8 a epoch), through a train loader of ``kind``."""

    def __init__(self, kind: str, workers: int = 0, n: int = 48, batch_size: int = 6) -> None:
        super().__init__()
        self.kind, self.workers, self.n, self.batch_size = kind, workers, n, batch_size

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n + 12, 8, generator=g)
        y = x @ torch.randn(8, 2, generator=g)
        self.train_set = TensorDataset(x[: self.n], y[: self.n])
        self.val_set = TensorDataset(x[self.n :], y[self.n :])

    def train_dataloader(self) -> Any:
        return train_loader(self.kind, self.train_set, self.batch_size, self.workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=12)


class StatefulDigits(DigitsDataModule):
    """The demo's digits task through a ``StatefulDataLoader`` of ``kind`` (batches of 128: 12 a epoch)."""

    def __init__(self, kind: str = "torchdata_random") -> None:
        super().__init__(batch_size=128)
        self.kind = kind

    def train_dataloader(self) -> Any:
        return train_loader(self.kind, self.train_set, self.batch_size)
