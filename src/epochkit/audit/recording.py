"""How the audit learns what was seen, without perturbing it.

* :class:`RecordingSampler` stands in for the train DataLoader's batch sampler (or sampler) and hands the *same*
  index batches through, keeping a reference to each. The DataLoader draws indices in the main process even with
  workers, so this sees every batch of indices exactly once, in dispatch order, with no extra iteration and no RNG
  draw; ``iter()`` is forwarded eagerly so even a sampler that draws its permutation in ``__iter__`` draws it at
  the same moment as without the audit.
* :func:`fingerprint` turns a batch into one int64 id per sample on the batch's device (an exact integer hash of the
  bits of every per-sample tensor), for iterable data sets that have no sampler indices.
* :func:`describe_loader` reads the configuration that decides the order (sampler type, seed, length, shuffle,
  drop_last, ...; for streams, the Hugging Face shuffle buffer and shards, litdata's chunks and window).
* :func:`train_loaders` names every loader of the fit's train ``CombinedLoader`` (dict keys, list indices, nested).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from epochkit.audit.payload import LoaderConfig

#: Index batches kept as Python objects before they are packed into one int64 array (bounds memory to 8 bytes a
#: sample; packing 1024 batches costs a few milliseconds, a few microseconds a step).
CHUNK = 1024


class IndexSink:
    """The items one pass of a sampler yielded, packed into int64 arrays every :data:`CHUNK` items.

    Example:
        >>> sink = IndexSink(batched=True)
        >>> for batch in ([3, 1], [0, 2], [4]):
        ...     sink.append(batch)
        >>> ids, sizes = sink.take(2)
        >>> ids.tolist(), sizes.tolist()
        ([3, 1, 0, 2], [2, 2])
    """

    __slots__ = ("batched", "chunks", "complete", "items", "pending", "restored")

    def __init__(self, batched: bool) -> None:
        self.batched = batched
        self.pending: list[Any] = []
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.items = 0
        self.complete = False  # the pass ran to its end (StopIteration)
        self.restored = False  # its iterator was restored from a loader's state: it yields only what follows the cut

    def append(self, item: Any) -> None:
        self.pending.append(item)
        self.items += 1
        if len(self.pending) >= CHUNK:
            self._pack()

    def _pack(self) -> None:
        if self.pending:
            ids, sizes = indices_to_ids(self.pending, self.batched)
            if ids.size and ids.min() >= 0 and ids.max() < 2**31:
                ids = ids.astype(np.int32)  # dataset indices: half the memory
            self.chunks.append((ids, sizes))
            self.pending = []

    def take(self, batches: int, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Ids and batch sizes of ``batches`` items after the first ``skip`` (what the loop consumed; workers draw
        ahead, and a restored loader may fast-forward over the items before its cut)."""
        self._pack()
        if not self.chunks:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if len(self.chunks) > 1:  # one array from here on, so the chunks are freed rather than copied
            self.chunks = [(np.concatenate([c[0] for c in self.chunks]), np.concatenate([c[1] for c in self.chunks]))]
        ids, sizes = self.chunks[0]
        start = int(sizes[:skip].sum())
        sizes = sizes[skip : skip + batches]
        return ids[start : start + int(sizes.sum())], sizes


class _RecordingIterator:
    """Iterator over the wrapped sampler's iterator that appends every item it returns to ``sink``."""

    __slots__ = ("_it", "_sink")

    def __init__(self, it: Iterator[Any], sink: IndexSink) -> None:
        self._it = it
        self._sink = sink

    def __iter__(self) -> _RecordingIterator:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._it)
        except StopIteration:
            self._sink.complete = True
            raise
        self._sink.append(item)
        return item


class _StatefulRecordingIterator(_RecordingIterator):
    """A :class:`_RecordingIterator` over a stateful iterator (torchdata's samplers' iterators): its
    ``state_dict``/``load_state_dict`` are the wrapped iterator's, so a ``StatefulDataLoader`` saves and restores
    exactly what it does without the audit."""

    __slots__ = ()

    def state_dict(self) -> Any:
        return self._it.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: Any) -> None:
        self._it.load_state_dict(state_dict)  # type: ignore[attr-defined]
        self._sink.restored = True


class RecordingSampler:
    """Stands in for a DataLoader's (batch) sampler and records what it yields; every other attribute
    (``set_epoch``, ``sampler``, ``batch_size``, ``drop_last``, ...) is the wrapped object's.

    Attributes:
        passes: What each ``iter()`` since the last :meth:`take` yielded, in order: one per epoch, more when
            Lightning started an iterator it then dropped (a reload) or cycled a shorter loader of several.
    """

    def __init__(self, inner: Any, batched: bool) -> None:
        self.inner = inner
        self.batched = batched
        self.passes: list[IndexSink] = []

    @property
    def sink(self) -> IndexSink:
        """The latest pass (an empty one before any)."""
        if not self.passes:
            self.passes.append(IndexSink(self.batched))
        return self.passes[-1]

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.inner)  # eager, exactly when the DataLoader asks for it
        sink = IndexSink(self.batched)
        self.passes.append(sink)
        stateful = callable(getattr(it, "state_dict", None)) and callable(getattr(it, "load_state_dict", None))
        return (_StatefulRecordingIterator if stateful else _RecordingIterator)(it, sink)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def take(self, batches: int, resumed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Ids and batch sizes of the epoch's pass, at most ``batches`` items (the steps the loop took), and forget
        every pass so far.

        The epoch's pass is the first one that ran to its end or is the last: a pass dropped unfinished before a
        later one (Lightning re-creates the iterator of a reloaded loader) was never trained on, and the passes after
        a finished one are a shorter loader cycled by ``CombinedLoader(mode="max_size_cycle")``.

        ``resumed``: the epoch was resumed mid-epoch from a stateful loader's state. A sampler iterator restored from
        its own state yields only what follows the cut; one without state is fast-forwarded by torchdata (the items
        before the cut are drawn again and dropped), so a finished pass then holds the epoch from its start and the
        loop consumed its last ``batches`` items.
        """
        ids, sizes = self.peek(batches, resumed, copy=False)
        self.passes = []
        return ids, sizes

    def peek(self, batches: int, resumed: bool = False, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`take` returns, without forgetting anything (a checkpoint taken mid-epoch)."""
        if not self.passes:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        sink = next((p for p in self.passes[:-1] if p.complete), self.passes[-1])
        skip = sink.items - batches if resumed and sink.complete and not sink.restored and sink.items > batches else 0
        ids, sizes = sink.take(min(batches, sink.items), skip)
        return (ids.copy(), sizes.copy()) if copy else (ids, sizes)


def attach(loader: DataLoader) -> RecordingSampler | None:
    """Install a :class:`RecordingSampler` in ``loader`` (None for an iterable data set, which has no indices)."""
    if isinstance(loader.dataset, IterableDataset):
        return None
    attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    inner = getattr(loader, attr)
    if isinstance(inner, RecordingSampler):
        return inner
    recorder = RecordingSampler(inner, batched=attr == "batch_sampler")
    # DataLoader forbids reassigning its sampler after construction through __setattr__; the wrapper yields
    # exactly what the original does, so bypassing that guard is safe. detach() restores the original.
    object.__setattr__(loader, attr, recorder)
    return recorder


def detach(loader: DataLoader) -> None:
    """Undo :func:`attach`."""
    for attr in ("batch_sampler", "sampler"):
        current = getattr(loader, attr, None)
        if isinstance(current, RecordingSampler):
            object.__setattr__(loader, attr, current.inner)


def _stable_id(index: Any) -> int:
    """A process-independent 63-bit id for a non-integer index (Python's hash of str is salted per process)."""
    digest = hashlib.blake2b(repr(index).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def indices_to_ids(items: list[Any], batched: bool) -> tuple[np.ndarray, np.ndarray]:
    """Flatten recorded sampler output into ``(ids, batch_sizes)``.

    Example:
        >>> ids, sizes = indices_to_ids([[3, 1], [0, 2], [4]], batched=True)
        >>> ids.tolist(), sizes.tolist()
        ([3, 1, 0, 2, 4], [2, 2, 1])
    """
    groups = items if batched else [[i] for i in items]
    sizes = np.fromiter((len(g) for g in groups), np.int64, count=len(groups))
    total = int(sizes.sum())
    try:
        ids = np.fromiter(itertools.chain.from_iterable(groups), np.int64, count=total)
    except (TypeError, ValueError):
        ids = np.fromiter((_stable_id(i) for i in itertools.chain.from_iterable(groups)), np.int64, count=total)
    return ids, sizes


FingerprintTables = dict[tuple[int, str], torch.Tensor]


def _multipliers(width: int, device: torch.device, tables: FingerprintTables | None) -> torch.Tensor:
    """Fixed odd int64 multipliers (splitmix64 of 0..width-1), made without touching any RNG, on ``device``; kept in
    ``tables`` (the caller's, so that device memory lives as long as the caller wants it, not the process)."""
    key = (width, str(device))
    if tables is not None and key in tables:
        return tables[key]
    with np.errstate(over="ignore"):
        z = np.arange(1, width + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
        z = z | np.uint64(1)
    table = torch.from_numpy(z.view(np.int64).copy())
    if device.type == "cuda":
        # From pinned memory the upload is asynchronous: no host synchronisation, even on the first batch.
        table = table.pin_memory()
    table = table.to(device, non_blocking=device.type == "cuda")
    if tables is not None:
        tables[key] = table
    return table


def _as_int64(t: torch.Tensor) -> torch.Tensor:
    """The bits of ``t`` as int64 values (floats by their bit pattern, so equal samples hash equally)."""
    if t.dtype.is_floating_point:
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}.get(t.element_size())
        if bits is None:
            return t.to(torch.float64).view(torch.int64)
        return t.contiguous().view(bits).to(torch.int64)
    if t.dtype.is_complex:
        return torch.view_as_real(t).reshape(t.shape[0], -1).contiguous().view(torch.int64)
    return t.to(torch.int64)


def fingerprint(batch: Any, tables: FingerprintTables | None = None) -> torch.Tensor:
    """One int64 id per sample of ``batch``, computed on the batch's device with no host synchronisation.

    Every tensor whose first dimension is the batch size contributes the exact bits of its row, combined by a
    weighted sum in wrapping int64 arithmetic, which is order-independent and therefore the same on any device.
    ``tables`` keeps the multipliers per width and device between calls (``ShuffleAudit`` keeps one per fit).

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
        >>> ids = fingerprint((x, torch.tensor([0, 1, 0])))
        >>> bool(ids[0] == ids[2]), bool(ids[0] == ids[1])
        (True, False)
    """
    tensors: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, lambda t: tensors.append(t.detach()))
    tensors = [t for t in tensors if t.ndim >= 1]
    if not tensors:
        raise ValueError("ShuffleAudit cannot fingerprint a batch without tensors; pass `sample_ids=`.")
    size = tensors[0].shape[0]
    out = torch.zeros(size, dtype=torch.int64, device=tensors[0].device)
    for t in tensors:
        if t.shape[0] != size:
            continue
        rows = _as_int64(t.reshape(size, -1))
        mixed = (rows * _multipliers(rows.shape[1], rows.device, tables)).sum(dim=1)
        out = out * 0x100000001B3 + mixed.to(out.device)
    return out


def extract(batch: Any, key: int | str | Callable[[Any], Any]) -> Any:
    """``key(batch)`` for a function, else ``batch[key]``."""
    if callable(key):
        return key(batch)
    return batch[key]


def _unwrap(obj: Any) -> Any:
    return obj.inner if isinstance(obj, RecordingSampler) else obj


def _inner_sampler(loader: DataLoader) -> Any:
    """The sampler that orders samples: the batch sampler's own ``sampler`` when it has one. A loader built with a
    batch sampler keeps a ``SequentialSampler`` it never uses as its ``sampler``: so does a ``StatefulDataLoader``
    that Lightning rebuilds under DDP (its ``DistributedSamplerWrapper`` goes into the loader's torchdata
    ``BatchSampler``)."""
    batch_sampler = _unwrap(loader.batch_sampler)
    if batch_sampler is not None:
        inner = getattr(batch_sampler, "sampler", None)
        if inner is not None:
            return _unwrap(inner)
        if not _plain_batches(batch_sampler):
            return batch_sampler
    return _unwrap(loader.sampler)


def _plain_batches(batch_sampler: Any) -> bool:
    """Whether a batch sampler just cuts its sampler's order into batches: torch's ``BatchSampler``, or torchdata's
    stateful one (which a ``StatefulDataLoader`` makes from ``batch_size``)."""
    kind = type(batch_sampler)
    return kind is BatchSampler or (_library(batch_sampler) == "torchdata" and kind.__name__ == "BatchSampler")


def _sized(obj: Any) -> int | None:
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


def _has_set_epoch(obj: Any) -> bool:
    return obj is not None and callable(getattr(obj, "set_epoch", None))


def _stateful(obj: Any) -> bool:
    """Whether ``obj`` saves and restores its own state (torchdata's ``Stateful`` protocol)."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _library(obj: Any) -> str:
    """The top-level package an object's class comes from."""
    return type(obj).__module__.split(".")[0]


def _hf_stream(dataset: Any) -> LoaderConfig:
    """A Hugging Face ``datasets.IterableDataset``: whether it shuffles (a buffer shuffle in its chain of example
    iterables), its buffer, its shards, and whether it was split across ranks."""
    shuffle, buffer = False, None
    node, visited = getattr(dataset, "_ex_iterable", None), set()
    while node is not None and id(node) not in visited:
        visited.add(id(node))
        if type(node).__name__ == "BufferShuffledExamplesIterable":
            shuffle, buffer = True, int(node.buffer_size)
        node = getattr(node, "ex_iterable", None)
    shards = getattr(dataset, "num_shards", None)
    return LoaderConfig(
        stream="hf_datasets",
        shuffle=shuffle,
        buffer_size=buffer,
        num_shards=int(shards) if isinstance(shards, int) else None,
        split_by_node=getattr(dataset, "_distributed", None) is not None,
    )


def _litdata_stream(dataset: Any, loader: DataLoader) -> LoaderConfig:
    """A litdata ``StreamingDataset``: shuffle, seed, its chunks (from its ``index.json`` when local) and the
    in-chunk shuffle window; whether a ``StreamingDataLoader`` sets its epoch."""
    chunks = chunk_size = None
    path = getattr(getattr(dataset, "input_dir", None), "path", None)
    try:
        with open(os.path.join(str(path), "index.json")) as handle:
            sizes = [int(c.get("chunk_size", 0)) for c in json.load(handle).get("chunks", [])]
        if sizes:
            chunks, chunk_size = len(sizes), round(sum(sizes) / len(sizes))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    window = getattr(dataset, "_item_shuffle_window", None)
    shuffle = getattr(dataset, "shuffle", None)
    seed = getattr(dataset, "seed", None)
    return LoaderConfig(
        stream="litdata",
        shuffle=bool(shuffle) if isinstance(shuffle, bool) else None,
        seed=int(seed) if isinstance(seed, int) else None,
        chunks=chunks,
        chunk_size=chunk_size,
        item_window=int(window) if isinstance(window, int) else None,
        loader_sets_epoch=_library(loader) == "litdata",
    )


def describe_loader(loader: DataLoader) -> LoaderConfig:
    """The configuration of a train DataLoader that decides what an epoch presents, as plain data.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> d = describe_loader(DataLoader(TensorDataset(torch.arange(10)), batch_size=4, shuffle=True))
        >>> d["sampler"], d["shuffle"], d["length"], d["drop_last"], d["dataset_size"], d["design"]
        ('RandomSampler', True, 10, False, 10, 'sample')
    """
    dataset = loader.dataset
    iterable = isinstance(dataset, IterableDataset)
    sampler = _inner_sampler(loader)
    batch_sampler = _unwrap(loader.batch_sampler)
    custom_batches = batch_sampler is not None and not _plain_batches(batch_sampler)
    shuffle: bool | None = None
    seed: int | None = None
    replacement = False
    # The data set size is counted in samples: the data set's length, never a sampler's (a RandomSampler with
    # num_samples=2N draws every sample twice; a custom batch sampler's len() counts batches). Only an explicit
    # subset sampler (SubsetRandomSampler) narrows it.
    dataset_size = None if iterable else _sized(dataset)
    padding = 0
    name = type(sampler).__qualname__
    uniform = False  # a torch sampler that permutes samples uniformly
    if isinstance(sampler, DistributedSampler):
        shuffle = bool(sampler.shuffle)
        seed = int(sampler.seed)
        dataset_size = _sized(sampler.dataset)
        if dataset_size is not None and not sampler.drop_last:
            padding = int(sampler.total_size) - dataset_size
        inner = getattr(sampler.dataset, "_sampler", None)  # Lightning's DistributedSamplerWrapper
        if inner is not None:
            name = f"{name}({type(inner).__qualname__})"
        uniform = inner is None
    elif isinstance(sampler, SequentialSampler):
        shuffle = False
        uniform = True
    elif isinstance(sampler, RandomSampler) or (_library(sampler) == "torchdata" and name == "RandomSampler"):
        # torchdata's stateful RandomSampler permutes as torch's does, and saves its generator with the loader
        shuffle = True
        replacement = bool(sampler.replacement)
        if sampler.generator is not None:
            seed = int(sampler.generator.initial_seed())
        uniform = True
    elif isinstance(sampler, SubsetRandomSampler):
        shuffle = True
        dataset_size = _sized(sampler.indices)
        uniform = True
    elif isinstance(sampler, WeightedRandomSampler):
        shuffle = True
        replacement = bool(sampler.replacement)
        uniform = True
    drop_last = getattr(batch_sampler, "drop_last", None)
    if drop_last is None:
        drop_last = bool(loader.drop_last)
    if isinstance(sampler, DistributedSampler) and sampler.drop_last:
        drop_last = True
    # Lightning calls set_epoch on loader.sampler and loader.batch_sampler.sampler, never on the batch sampler.
    reached = [_unwrap(loader.sampler), getattr(batch_sampler, "sampler", None)]
    config = LoaderConfig(
        sampler="" if iterable else name,
        shuffle=None if iterable else shuffle,
        seed=seed,
        length=None if iterable else _sized(sampler),
        drop_last=bool(drop_last),
        replacement=replacement,
        dataset_size=dataset_size,
        padding=padding,
        iterable=iterable,
        dataset=type(dataset).__qualname__,
        num_workers=int(loader.num_workers),
        persistent_workers=bool(loader.persistent_workers),
        dataset_set_epoch=_has_set_epoch(dataset),
        batched=loader.batch_sampler is not None,
        design="block" if iterable else ("sample" if uniform and not custom_batches else "custom"),
        stream="",
        batch_sampler=type(batch_sampler).__qualname__ if custom_batches else "",
        batch_sampler_set_epoch=custom_batches and _has_set_epoch(batch_sampler),
        sampler_set_epoch=not iterable and any(_has_set_epoch(s) for s in reached),
        stateful_loader=_stateful(loader),
        stateful_sampler=not iterable
        and any(
            _stateful(s) or _library(s) == "torchdata"
            for s in (sampler, batch_sampler if custom_batches else None)
            if s is not None
        ),
        generator=getattr(sampler, "generator", None) is not None,
    )
    if iterable:
        library = _library(dataset)
        if library == "datasets" and hasattr(dataset, "_ex_iterable"):
            config.update(_hf_stream(dataset))
        elif library == "litdata":
            config.update(_litdata_stream(dataset, loader))
        else:
            config["stream"] = "iterable"
    return config


def train_loaders(structure: Any) -> list[tuple[str | None, tuple[Any, ...], Any]]:
    """Every loader of a train ``CombinedLoader``'s structure (``trainer.train_dataloader``) as ``(name, path,
    loader)``, in the order Lightning flattens them; ``path`` holds the dict keys and list indices leading to it and
    ``name`` joins them with ``/`` (None for a fit with a single loader).

    Example:
        >>> [(name, path) for name, path, _ in train_loaders({"a": None, 2: [None, None]})]
        [('a', ('a',)), ('2/0', (2, 0)), ('2/1', (2, 1))]
        >>> train_loaders(4), train_loaders([1, 2])  # a container of primitives is one iterable, as in Lightning
        ([(None, (), 4)], [(None, (), [1, 2])])
    """
    out: list[tuple[str | None, tuple[Any, ...], Any]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        children = list(node.values()) if isinstance(node, Mapping) else node if isinstance(node, list | tuple) else []
        if children and all(isinstance(child, int | float | str) for child in children):
            out.append(("/".join(map(str, path)) if path else None, path, node))  # a leaf to Lightning, too
        elif isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list | tuple):
            for index, value in enumerate(node):
                walk(value, (*path, index))
        else:
            out.append(("/".join(map(str, path)) if path else None, path, node))

    walk(structure, ())
    return out


def sub_batch(batch: Any, path: tuple[Any, ...]) -> Any:
    """The part of a combined batch that the loader at ``path`` (see :func:`train_loaders`) yielded; None when it
    yielded nothing this step (an exhausted loader in ``max_size`` mode).

    Example:
        >>> sub_batch({"a": 1, 2: [2, 3]}, (2, 1)), sub_batch(5, ()), sub_batch({"a": None}, ("a",))
        (3, 5, None)
    """
    for key in path:
        if batch is None:
            return None
        batch = batch[key]
    return batch
