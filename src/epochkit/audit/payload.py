"""The typed data passed between :mod:`.recording` (what a loader is and what it yielded), :mod:`.verdicts` (what
it means) and the callback: a loader's configuration, one rank's epoch, and the merged record of an epoch kept to
compare the next one with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch

from epochkit.audit.functional import LabelStats


class LoaderConfig(TypedDict, total=False):
    """What decides the order a train loader presents, as plain data (JSON in ``shuffle_audit.json``).

    Keys:
        sampler: The class that orders samples (``""`` for an iterable data set).
        shuffle: Whether it shuffles (None when unknown).
        seed: Its seed, when it has one (a ``DistributedSampler``'s, or a ``RandomSampler`` generator's).
        length: ``len()`` of the sampler.
        drop_last: Whether a last incomplete batch is dropped.
        replacement: Whether it draws with replacement.
        dataset_size: Samples in the data set (None for an iterable data set).
        padding: Samples a ``DistributedSampler`` repeats to even out the ranks.
        iterable: Whether the data set is an ``IterableDataset``.
        dataset: The data set's class.
        num_workers: DataLoader workers.
        persistent_workers: Whether they persist across epochs.
        dataset_set_epoch: Whether the data set has ``set_epoch``.
        batched: Whether the loader batches (a batch sampler).
        design: ``"sample"`` (a torch sampler that permutes samples uniformly), ``"block"`` (a stream that shuffles
            shards or chunks, then within a buffer or chunk) or ``"custom"`` (a custom sampler or batch sampler,
            whose epochs may be correlated by design, e.g. length-grouped batching).
        stream: ``"hf_datasets"``, ``"litdata"``, ``"iterable"`` (another ``IterableDataset``) or ``""``.
        batch_sampler: A custom batch sampler's class (``""`` for none or torch's ``BatchSampler``).
        batch_sampler_set_epoch: Whether that batch sampler has ``set_epoch`` (Lightning never calls it).
        sampler_set_epoch: Whether the sampler has ``set_epoch`` (Lightning calls it).
        buffer_size: A Hugging Face stream's shuffle buffer.
        num_shards: A Hugging Face stream's shards.
        split_by_node: Whether a Hugging Face stream was split across ranks (``split_dataset_by_node``).
        chunk_size: A litdata data set's mean samples per chunk.
        chunks: Its chunks.
        item_window: litdata's in-chunk shuffle window (``item_shuffle_window``; 0: the whole chunk).
        loader_sets_epoch: Whether the loader sets the data set's epoch itself (litdata's ``StreamingDataLoader``).
        stateful_loader: Whether the loader saves its position (``state_dict``/``load_state_dict``, as torchdata's
            ``StatefulDataLoader``): Lightning restores it on a mid-epoch resume, and restarts the epoch otherwise.
        stateful_sampler: Whether the sampler (or batch sampler) saves its own state, its permutation included.
        generator: Whether the sampler draws its order from its own ``torch.Generator``.
    """

    sampler: str
    shuffle: bool | None
    seed: int | None
    length: int | None
    drop_last: bool
    replacement: bool
    dataset_size: int | None
    padding: int
    iterable: bool
    dataset: str
    num_workers: int
    persistent_workers: bool
    dataset_set_epoch: bool
    batched: bool
    design: str
    stream: str
    batch_sampler: str
    batch_sampler_set_epoch: bool
    sampler_set_epoch: bool
    buffer_size: int | None
    num_shards: int | None
    split_by_node: bool | None
    chunk_size: int | None
    chunks: int | None
    item_window: int | None
    loader_sets_epoch: bool
    stateful_loader: bool
    stateful_sampler: bool
    generator: bool


@dataclass
class EpochPayload:
    """One rank's epoch of one loader, reduced to what the verdicts need (gathered to rank 0 once per epoch).

    Attributes:
        source: Where the ids came from (``"sampler indices"``, ``"sample_ids"``, ``"content fingerprints"``,
            ``"none"``).
        presented: Samples presented (exact, over the rank's whole stream).
        distinct: Distinct samples among them (exact).
        label: Label statistics of the stream (None without labels).
        fraction: Share of the ids kept in the record (``max_samples``).
        ids: The kept ids, in presentation order.
        successors: The id that followed each kept id in the full stream (-1 for none).
        positions: Each kept id's position in the rank's stream.
        batches: Each kept id's batch index.
        digest: A 64-bit digest (hex) of the rank's whole order (ids and batch sizes).
        label_table: Class counts of the batches, binned into at most 128 columns (``columns x classes``), for the
            label map; None without labels.
        cut: In the epoch a mid-epoch checkpoint cut, how this rank's part after the resume continued its part before
            the cut (:func:`epochkit.audit.resume.cut_part`); None in every other epoch.
    """

    source: str
    presented: int
    distinct: int
    label: LabelStats | None
    fraction: float
    ids: np.ndarray
    successors: np.ndarray
    positions: np.ndarray
    batches: np.ndarray
    digest: str = ""
    label_table: np.ndarray | None = None
    cut: CutPart | None = None


@dataclass(frozen=True)
class CutPart:
    """One rank's epoch cut by a mid-epoch checkpoint, as counts (gathered to rank 0 with its payload).

    Attributes:
        before: Samples the rank presented before the cut.
        after: Samples it presented after the resume.
        twice: Of those after the resume, the ones presented before the cut already (by any rank).
        distinct: Distinct samples of the rank's whole epoch (both parts).
        follows: Which older order the part after the resume follows (``"epoch 0's order from the cut on"``), or "".
    """

    before: int
    after: int
    twice: int
    distinct: int
    follows: str = ""


@dataclass
class Record:
    """An epoch's order over all ranks (ordered by global position), kept to compare the next epoch with.

    Attributes:
        ids: Kept ids in presentation order.
        batches: Each one's (effective) batch.
        successors: Each one's true successor in its rank's stream (-1 for none).
    """

    ids: np.ndarray
    batches: np.ndarray
    successors: np.ndarray

    def to_state(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint."""
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k)).copy()) for k in _RECORD_KEYS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_state`."""
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in state.items()}
        return cls(arrays["ids"], arrays["batches"], arrays["successors"])


_RECORD_KEYS = ("ids", "batches", "successors")
