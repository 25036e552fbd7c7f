"""Numpy models of the shuffles real pipelines do, for Monte Carlo over thousands of epochs (each one a fresh draw,
as with ``set_epoch``), checked against the real libraries in ``test_streams.py``.

* :func:`hf_epoch`: a Hugging Face ``datasets`` stream, ``Dataset.to_iterable_dataset(num_shards=S)
  .shuffle(seed, buffer_size=B)`` (datasets 5.2): contiguous shards in a fresh random order, split contiguously into
  ``min(S, 10)`` sources (``max_buffer_input_shards``) read round robin ``max(1, B // 10)`` rows at a time, then the
  rolling buffer (fill to ``B``, permute, yield all but ``B // 2``); with DataLoader workers, worker ``w`` gets shards
  ``w::W`` and the loader takes one batch from each worker in turn.
* :func:`litdata_epoch`: a litdata ``StreamingDataset(shuffle=True)`` (0.2.76, ``FullShuffle``): chunks in a fresh
  random order, the item sequence split into equal contiguous parts per worker (and rank), each chunk part
  block-shuffled (aligned windows of ``item_shuffle_window`` in random order, items permuted within; 0 or 1: the whole
  part), batches round robin over workers.
* :func:`length_grouped_epoch`: HF Trainer's ``group_by_length`` (``LengthGroupedSampler``): a random permutation in
  megabatches of ``50 * batch``, each sorted by length, longest first.
* :func:`bucketed_epoch`: fixed length buckets, each shuffled and cut into batches, the batches in random order.
"""

from __future__ import annotations

import numpy as np


def _round_robin(streams: list[np.ndarray], take: int) -> np.ndarray:
    """Interleave streams ``take`` items at a time, skipping exhausted ones (vectorised: sort by round, stream)."""
    if not streams:
        return np.empty(0, np.int64)
    rounds = np.concatenate([np.arange(s.size) // take for s in streams])
    which = np.concatenate([np.full(s.size, i) for i, s in enumerate(streams)])
    return np.concatenate(streams)[np.lexsort((which, rounds))]


def _buffer_shuffle(stream: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """datasets 5.2's buffer: fill to ``buffer``, permute, yield all but ``buffer // 2``, keep those."""
    out, held = [], np.empty(0, np.int64)
    keep = buffer // 2
    for start in range(0, stream.size, max(1, buffer - keep)):
        held = np.concatenate([held, stream[start : start + max(1, buffer - keep)]])
        if held.size >= buffer:
            held = held[rng.permutation(held.size)]
            out.append(held[: held.size - keep])
            held = held[held.size - keep :]
    out.append(held[rng.permutation(held.size)])
    return np.concatenate(out)


def hf_epoch(
    n: int, shards: int, buffer: int, rng: np.random.Generator, workers: int = 0, batch: int = 1
) -> np.ndarray:
    """One epoch's order of sample ids ``0..n-1`` from a shuffled Hugging Face stream (see the module docstring)."""
    bounds = [n * s // shards for s in range(shards + 1)]
    shard_ids = [np.arange(bounds[s], bounds[s + 1]) for s in range(shards)]
    order = rng.permutation(shards)
    per_worker = [order[w::workers] for w in range(workers)] if workers else [order]
    streams = []
    for mine in per_worker:
        sources = min(len(mine), 10)
        parts = np.array_split(mine, sources) if sources else []
        inputs = [np.concatenate([shard_ids[s] for s in part]) for part in parts]
        streams.append(_buffer_shuffle(_round_robin(inputs, max(1, buffer // 10)), buffer, rng))
    if not workers:
        return streams[0]
    return _round_robin(streams, batch)


def _block_shuffle(items: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    if window <= 1 or items.size <= window:
        return items[rng.permutation(items.size)]
    blocks = [items[i : i + window] for i in range(0, items.size, window)]
    blocks = [b[rng.permutation(b.size)] for b in blocks]
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


def litdata_epoch(
    n: int, chunk: int, rng: np.random.Generator, window: int = 256, workers: int = 1, batch: int = 1
) -> np.ndarray:
    """One epoch's order of sample ids ``0..n-1`` from a shuffled litdata stream (see the module docstring)."""
    chunks = [np.arange(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    order = rng.permutation(len(chunks))
    flat_chunk = np.concatenate([np.full(chunks[c].size, i) for i, c in enumerate(order)])
    flat = np.concatenate([chunks[c] for c in order])
    cuts = [round(n * w / workers / batch) * batch for w in range(workers)] + [n]
    streams = []
    for w in range(workers):
        part, owner = flat[cuts[w] : cuts[w + 1]], flat_chunk[cuts[w] : cuts[w + 1]]
        pieces = [_block_shuffle(part[owner == c], window, rng) for c in np.unique(owner)]
        streams.append(np.concatenate(pieces) if pieces else part)
    return _round_robin(streams, batch) if workers > 1 else streams[0]


def length_grouped_epoch(lengths: np.ndarray, batch: int, rng: np.random.Generator, mult: int = 50) -> np.ndarray:
    """One epoch of HF Trainer's ``LengthGroupedSampler`` (megabatches of ``mult * batch`` sorted by length)."""
    perm = rng.permutation(lengths.size)
    size = mult * batch
    megabatches = [perm[i : i + size] for i in range(0, perm.size, size)]
    return np.concatenate([m[np.argsort(-lengths[m], kind="stable")] for m in megabatches])


def bucketed_epoch(
    lengths: np.ndarray, buckets: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of a bucketing batch sampler: ``buckets`` length quantiles, each shuffled and cut into batches,
    the batches in random order; returns the order and each position's batch."""
    edges = np.quantile(lengths, np.linspace(0, 1, buckets + 1)[1:-1])
    which = np.searchsorted(edges, lengths, side="right")
    batches = []
    for b in range(buckets):
        members = np.flatnonzero(which == b)
        members = members[rng.permutation(members.size)]
        batches += [members[i : i + batch] for i in range(0, members.size, batch)]
    picked = [batches[i] for i in rng.permutation(len(batches))]
    return np.concatenate(picked), np.repeat(np.arange(len(picked)), [p.size for p in picked])
