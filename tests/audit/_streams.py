"""Real streaming pipelines on data the tests make (no download), for a real Trainer and for the false-positive
suites: Hugging Face ``datasets`` (a map-style ``Dataset`` in torch format, and a streaming ``IterableDataset`` from
``to_iterable_dataset(num_shards=...)``, shuffled with ``.shuffle(seed, buffer_size)`` or not) and litdata
(``optimize`` into a directory, then ``StreamingDataset`` read through ``StreamingDataLoader`` or a plain
``DataLoader``). Everything is module-level so ``ddp_spawn`` can pickle it.

Every row carries its index ``idx`` (what ``ShuffleAudit(sample_ids="idx")`` reads), 64 float features ``x`` and a
label ``y`` in 0..3.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import datasets
import lightning.pytorch as pl
import litdata
import numpy as np
import torch
from torch.utils.data import DataLoader

from tests.helpers import DigitsClassifier

FEATURES = 64
CLASSES = 4


def columns(n: int, seed: int) -> dict[str, np.ndarray]:
    """``idx``, ``x`` and ``y`` of ``n`` seeded rows."""
    rng = np.random.default_rng(seed)
    return {
        "idx": np.arange(n),
        "x": rng.standard_normal((n, FEATURES)).astype(np.float32),
        "y": rng.integers(0, CLASSES, n),
    }


class DictClassifier(DigitsClassifier):
    """The digits MLP on dict batches ``{"x": ..., "y": ...}`` (what the streaming loaders collate)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        return super().training_step((batch["x"], batch["y"]), batch_idx)


def model() -> DictClassifier:
    return DictClassifier(hidden=16)


def hf_table(n: int, seed: int) -> datasets.Dataset:
    """A map-style Hugging Face ``Dataset`` in torch format (an Arrow table in memory)."""
    return datasets.Dataset.from_dict(columns(n, seed)).with_format("torch")


def hf_stream(n: int, shards: int, buffer: int | None, seed: int = 0, shuffle_seed: int = 0) -> Any:
    """A streaming ``datasets.IterableDataset`` of ``shards`` shards, shuffled with ``buffer`` (None: not shuffled)."""
    stream = datasets.Dataset.from_dict(columns(n, seed)).to_iterable_dataset(num_shards=shards).with_format("torch")
    return stream.shuffle(seed=shuffle_seed, buffer_size=buffer) if buffer else stream


class HFStream(pl.LightningDataModule):
    """A Hugging Face stream in a plain ``DataLoader``.

    Args:
        n: Rows.
        shards: Shards of the stream.
        buffer: Shuffle buffer (None: no ``.shuffle``).
        batch_size: Batch size.
        num_workers: DataLoader workers (each gets whole shards).
        seed: Seed of the data.
        shuffle_seed: Seed of ``.shuffle``.
        split: Split the stream across ranks with ``split_dataset_by_node``.
    """

    def __init__(
        self,
        n: int = 256,
        shards: int = 4,
        buffer: int | None = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
        split: bool = False,
    ) -> None:
        super().__init__()
        self.n, self.shards, self.buffer, self.batch_size = n, shards, buffer, batch_size
        self.num_workers, self.seed, self.shuffle_seed, self.split = num_workers, seed, shuffle_seed, split

    def setup(self, stage: str) -> None:
        self.train_set = hf_stream(self.n, self.shards, self.buffer, self.seed, self.shuffle_seed)
        if self.split:
            from datasets.distributed import split_dataset_by_node

            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self.train_set = split_dataset_by_node(self.train_set, rank=rank, world_size=world)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, num_workers=self.num_workers)


def _litdata_row(index: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, index])
    return {"idx": index, "x": rng.standard_normal(FEATURES).astype(np.float32), "y": int(rng.integers(CLASSES))}


def optimize_litdata(root: str | os.PathLike[str], n: int, chunk_size: int, seed: int = 0) -> str:
    """``litdata.optimize`` ``n`` rows into ``root/data`` in chunks of ``chunk_size`` (one forked worker; litdata's
    scratch folders under ``root`` too); returns the directory."""
    out = os.path.join(root, "data")
    scratch = {
        "DATA_OPTIMIZER_CACHE_FOLDER": os.path.join(root, "optimize_chunks"),
        "DATA_OPTIMIZER_DATA_CACHE_FOLDER": os.path.join(root, "optimize_data"),
    }
    saved = {key: os.environ.get(key) for key in scratch}
    os.environ.update(scratch)
    try:
        litdata.optimize(
            fn=functools.partial(_litdata_row, seed=seed),
            inputs=list(range(n)),
            output_dir=out,
            chunk_size=chunk_size,
            num_workers=1,
            start_method="fork",
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out


def litdata_stream(path: str, cache: str, shuffle: bool, seed: int = 42, window: int | str | None = None) -> Any:
    return litdata.StreamingDataset(path, cache_dir=cache, shuffle=shuffle, seed=seed, item_shuffle_window=window)


class LitStream(pl.LightningDataModule):
    """A litdata stream through ``StreamingDataLoader`` (``plain=True``: a plain ``DataLoader``).

    Args:
        path: The optimized directory (:func:`optimize_litdata`).
        cache: A directory for litdata's cache (one per rank is made below it).
        shuffle: ``StreamingDataset(shuffle=...)``.
        batch_size: Batch size.
        seed: ``StreamingDataset(seed=...)``.
        plain: Read through ``torch.utils.data.DataLoader`` (which never sets the data set's epoch).
        num_workers: Loader workers.
    """

    def __init__(
        self,
        path: str,
        cache: str,
        shuffle: bool = True,
        batch_size: int = 16,
        seed: int = 42,
        plain: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.path, self.cache, self.shuffle, self.batch_size = path, cache, shuffle, batch_size
        self.seed, self.plain, self.num_workers = seed, plain, num_workers

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        stream = litdata_stream(self.path, os.path.join(self.cache, f"rank{rank}"), self.shuffle, self.seed)
        if self.plain:
            return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)
        return litdata.StreamingDataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)


def orders(loader: Any, epochs: int, set_epoch: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate a real loader for ``epochs`` epochs (calling the data set's ``set_epoch`` when asked, as ``SetEpoch``
    does), yielding each epoch's ``idx`` in order and the batch sizes."""
    for epoch in range(epochs):
        if set_epoch and hasattr(loader.dataset, "set_epoch") and not isinstance(loader, litdata.StreamingDataLoader):
            loader.dataset.set_epoch(epoch)
        batches = [batch["idx"].reshape(-1).numpy() for batch in loader]
        yield np.concatenate(batches), np.array([b.size for b in batches])
