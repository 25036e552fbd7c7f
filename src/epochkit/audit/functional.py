"""Pure statistics of what an epoch presented, on numpy arrays; no Trainer needed.

An epoch is recorded as the sequence of sample ids in the order the model saw them (``ids``), with the batch each
position fell in (``batches``). Every statistic here comes with its expectation under the null hypothesis "this
epoch is a fresh uniform random permutation", and every threshold is derived from that null (see
:data:`FLAG_SIGMAS`), so a healthy shuffled run is not flagged:

* coverage and duplicates are exact (a shuffle of the data has no duplicate and misses nothing);
* Spearman's rho of the positions of the samples two epochs share has mean 0 and variance ``1 / (n - 1)``;
* the co-batch ratio (pairs sharing a batch again, over its expectation) has mean 1, the count of re-met pairs being
  close to Poisson with that expectation; it is flagged from the exact Poisson tail (:data:`TAIL`), not a normal
  approximation, which fails when few pairs are expected (batch size 2 or 3);
* the number of preserved successors is close to Poisson(1);
* Spearman's footrule (the summed displacement of the shared samples' ranks) has mean ``(n^2 - 1) / 3`` and variance
  ``(n + 1)(2 n^2 + 7) / 45`` (Diaconis and Graham, 1977);
* batches identical as sets: ``P(J >= j) <= E[binom(J, j)]``, exact for a uniformly random partition (see
  :func:`identical_batches_bound`), which is what few batches need (the Poisson tail of re-met pairs fails there);
* the label-change rate has mean ``1 - sum_k n_k (n_k - 1) / (n (n - 1))`` (``1 - sum p^2`` for large ``n``);
* the mean label entropy of the batches equals the entropy of a random batch, estimated by a seeded Monte-Carlo draw;
  its deficit from the pooled label entropy is a G-test statistic (chi-square under a shuffle), which bounds the
  heavy lower tail of a few bounded, skewed batch entropies where a normal margin does not.

Streams and custom samplers shuffle in blocks (shards or chunks in a new order, samples mixed within a buffer or a
chunk window; length-grouped batching re-meets similar samples by design), so their epochs stay correlated and the
uniform null does not describe them. Whatever the design, a *replay* is local: most samples keep their successor
(:data:`REPLAY_SHARE`), or most same-batch pairs meet again (:data:`BATCH_REPLAY_SHARE`), or most batches come back
identical as sets. A block shuffle that mixes each sample among ``w`` others keeps about ``1 / w`` of the successors
(at most 1/4, for blocks of 2) and ``(b - 1) / (w - 1)`` of the pairs of a batch of ``b``, so these thresholds hold for
it; the uniform thresholds then measure *how weakly* it mixes (a notice, see :mod:`epochkit.audit.verdicts`).

Vectorised, O(N) memory and time; for dataset indices no sort of the epoch (:func:`order_stats` says how), and sums
of ranks in exact integers. ``benchmarks/shuffle_audit.py`` times 10 million samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Standard deviations a statistic must deviate from its null expectation before it is flagged (``Z`` in the formulas
#: below). At 6 sigma a healthy epoch is flagged with probability below 1e-8 per check (normal approximation).
FLAG_SIGMAS = 6.0
#: Tail probability below which a count is flagged when its null distribution is known (Poisson): a healthy epoch
#: is flagged with probability below 1e-9 per check.
TAIL = 1e-9
#: Below this many shared samples the order of two epochs is not compared (too few for any evidence).
MIN_ORDER_SAMPLES = 10
#: A preserved-successor count this high has probability below 1e-9 under a fresh shuffle (Poisson(1) tail).
MIN_SUCCESSOR_COUNT = 13
#: Share of the samples keeping their successor from which the order came back (a replay, rotation or shift),
#: whatever the shuffle's design: a block shuffle keeps about ``1 / w`` of them (at most 1/4).
REPLAY_SHARE = 0.5
#: Share of the same-batch pairs meeting again from which the same batches came back, whatever the design: a batch
#: of ``b`` filled from a window of ``w`` samples re-meets about ``(b - 1) / (w - 1)`` of its pairs.
BATCH_REPLAY_SHARE = 0.75
#: With this many full batches or fewer, co-batch evidence is judged on batches identical as sets only (an exact
#: bound): the count of re-met pairs is far from Poisson when a few batches cover the data (2 batches of 10 repeat
#: their partition once in 92,000 epochs, which the Poisson tail put below 1e-9).
FEW_BATCHES = 8
#: Mean displacement, as a share of a fresh shuffle's, at or below which a stream mixes weakly.
WEAK_DISPLACEMENT = 0.5


@dataclass(frozen=True)
class CoverageStats:
    """How much of the data one epoch (or one rank) presented.

    Attributes:
        presented: Positions presented (samples drawn, counting repeats).
        distinct: Distinct samples among them.
        expected: Distinct samples a healthy epoch presents: ``min(dataset_size, presented)``.
        duplicates: ``presented - distinct``.
        allowed_duplicates: Repeats a healthy epoch may have (``DistributedSampler`` padding).
    """

    presented: int
    distinct: int
    expected: int
    duplicates: int
    allowed_duplicates: int

    @property
    def coverage(self) -> float:
        """``distinct / expected`` (1.0 for an empty epoch)."""
        return self.distinct / self.expected if self.expected else 1.0

    @property
    def missing(self) -> int:
        """Samples a healthy epoch would have presented but this one did not."""
        return max(0, self.expected - self.distinct)


def _dense(ids: np.ndarray) -> bool:
    """Whether ``ids`` are small non-negative integers, so tables indexed by id are cheap."""
    return ids.size > 0 and ids.dtype.kind in "iu" and int(ids.min()) >= 0 and int(ids.max()) < 4 * ids.size + 4096


def _compact(*arrays: np.ndarray, missing: int | None = None) -> tuple[list[np.ndarray], int]:
    """Map the ids of several arrays to one dense code space ``[0, size)``; returns the coded arrays and size.

    Entries equal to ``missing`` (a "no successor" marker) become -1.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if missing is not None:
        valid = [a != missing for a in arrays]
        coded, size = _compact(*(a[v] for a, v in zip(arrays, valid, strict=True)))
        out_masked = []
        for a, v, c in zip(arrays, valid, coded, strict=True):
            full = np.full(a.shape, -1, np.int64)
            full[v] = c
            out_masked.append(full)
        return out_masked, size
    joined = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    if joined.size == 0:
        return [a.astype(np.int64) for a in arrays], 0
    if _dense(joined):
        return [a.astype(np.int64, copy=False) for a in arrays], int(joined.max()) + 1
    _, inverse = np.unique(joined, return_inverse=True)
    inverse = inverse.reshape(-1)
    out, start = [], 0
    for a in arrays:
        out.append(inverse[start : start + a.size])
        start += a.size
    return out, int(inverse.max()) + 1


def count_distinct(ids: np.ndarray) -> int:
    """Number of distinct ids.

    Example:
        >>> count_distinct(np.array([3, 1, 3, 2]))
        3
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return 0
    if _dense(ids):
        present = np.zeros(int(ids.max()) + 1, bool)
        present[ids] = True
        return int(np.count_nonzero(present))
    return int(np.unique(ids).size)


def coverage_stats(ids: np.ndarray, dataset_size: int | None, allowed_duplicates: int = 0) -> CoverageStats:
    """Coverage and duplicates of one epoch's ``ids`` against a data set of ``dataset_size`` samples.

    ``dataset_size=None`` (an iterable data set of unknown size) expects every presented sample to be distinct.

    Example:
        >>> s = coverage_stats(np.array([0, 1, 2, 2]), dataset_size=4)
        >>> s.distinct, s.duplicates, s.missing, round(s.coverage, 2)
        (3, 1, 1, 0.75)
    """
    ids = np.asarray(ids)
    presented = int(ids.size)
    distinct = count_distinct(ids)
    expected = presented if dataset_size is None else min(int(dataset_size), presented)
    return CoverageStats(presented, distinct, expected, presented - distinct, int(allowed_duplicates))


def rank_overlap(ids_per_rank: Sequence[np.ndarray]) -> tuple[int, int]:
    """Samples seen by more than one rank, and distinct samples seen over all ranks.

    Example:
        >>> rank_overlap([np.array([0, 1, 2]), np.array([2, 3, 4])])
        (1, 5)
    """
    arrays = [np.asarray(a) for a in ids_per_rank]
    coded, size = _compact(*arrays)
    if size == 0:
        return 0, 0
    ranks_seen = np.zeros(size, np.int32)
    for codes in coded:
        present = np.zeros(size, bool)
        present[codes] = True
        ranks_seen += present
    return int(np.count_nonzero(ranks_seen > 1)), int(np.count_nonzero(ranks_seen))


@dataclass(frozen=True)
class OrderStats:
    """How much of the previous epoch's order survived into this one (over the samples both epochs saw).

    Attributes:
        shared: Samples present in both epochs.
        spearman: Spearman's rho of their positions (nan when fewer than :data:`MIN_ORDER_SAMPLES`).
        cobatch_ratio: Pairs sharing a batch in both epochs, over its expectation under a fresh shuffle.
        cobatch_expected: That expectation, in pairs (0 when batches carry no pairs).
        successors_preserved: Samples whose successor is the same as in the previous epoch.
        successor_pairs: Samples with a successor in both epochs.
        footrule: Spearman's footrule, the summed displacement ``sum |r_prev - r_cur|`` of the shared samples' ranks
            (nan below :data:`MIN_ORDER_SAMPLES`).
        successors_reversed: Samples now followed by the sample that preceded them (a reversed order).
        cobatch_together: Same-batch pairs of this epoch that were in one batch in the previous epoch too.
        cobatch_pairs: Same-batch pairs of this epoch.
        batch_size: The most common batch size (over shared samples) of both epochs, 0 when they differ.
        full_batches: Batches of that size in this epoch and in the previous one.
        identical_batches: Batches of that size identical as sets to a batch of the previous epoch.
        batches: Batches of this epoch holding shared samples.
        order_map: When asked for, the 2-D histogram of the shared samples' rank this epoch (rows) against the
            previous epoch (columns) in :func:`order_map_bins` bins, as counts over a fresh shuffle's (1 on average).
    """

    shared: int
    spearman: float
    cobatch_ratio: float
    cobatch_expected: float
    successors_preserved: int
    successor_pairs: int
    footrule: float = float("nan")
    successors_reversed: int = 0
    cobatch_together: float = 0.0
    cobatch_pairs: float = 0.0
    batch_size: int = 0
    full_batches: tuple[int, int] = (0, 0)
    identical_batches: int = 0
    batches: int = 0
    order_map: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def successor_fraction(self) -> float:
        """``successors_preserved / successor_pairs`` (nan when there is no pair)."""
        return self.successors_preserved / self.successor_pairs if self.successor_pairs else float("nan")

    @property
    def cobatch_share(self) -> float:
        """Share of this epoch's same-batch pairs that met in the previous epoch too (nan without pairs); a fresh
        shuffle gives about ``(b - 1) / (n - 1)``, a replay of the batches 1."""
        return self.cobatch_together / self.cobatch_pairs if self.cobatch_pairs else float("nan")

    @property
    def displacement(self) -> float:
        """Mean displacement over a fresh shuffle's, ``footrule / ((n^2 - 1) / 3)``: about 1 for a fresh shuffle,
        0 for a replay (nan when not measured)."""
        mean, _ = footrule_null(self.shared)
        return self.footrule / mean if mean > 0 else float("nan")


def order_map_bins(n: int) -> int:
    """Bins per axis of an order map of ``n`` shared samples: about 4 samples a bin under a fresh shuffle, between 8
    and 64.

    Example:
        >>> order_map_bins(192), order_map_bins(1437), order_map_bins(10_000_000)
        (8, 18, 64)
    """
    return int(min(64, max(8, math.isqrt(max(n, 1) // 4))))


def _index_dtype(bound: int) -> type[np.signedinteger]:
    """The smallest signed integer type that holds ``-1 .. bound`` exactly (int32 for under 2**31)."""
    return np.int32 if bound < 2**31 else np.int64


#: Index arrays are used in pieces of this many entries: numpy copies an index that is not intp (dataset indices are
#: int32) to intp before using it, which for a whole epoch is a temporary twice its size.
_PIECE = 1 << 20


def take(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for a 1-D ``index``, read in pieces (see :data:`_PIECE`), so no epoch-sized intp copy of the
    index is made.

    Example:
        >>> take(np.array([10, 11, 12]), np.array([2, 0, 2], np.int32)).tolist()
        [12, 10, 12]
    """
    if index.dtype == np.intp or index.size <= _PIECE:
        return table[index]
    out = np.empty(index.shape, table.dtype)
    for start in range(0, index.size, _PIECE):
        out[start : start + _PIECE] = table[index[start : start + _PIECE]]
    return out


def bincount(size: int, keys: Callable[[slice], np.ndarray], minlength: int) -> np.ndarray:
    """``np.bincount`` of ``size`` keys (all below ``minlength``), given piece by piece by ``keys(piece)`` (see
    :data:`_PIECE`): no epoch-sized temporaries for the keys or their intp copy.

    Example:
        >>> values = np.array([0, 2, 2, 1])
        >>> bincount(values.size, lambda piece: values[piece], minlength=3).tolist()
        [1, 1, 2]
    """
    counts = np.zeros(minlength, np.intp)
    for start in range(0, size, _PIECE):
        counts += np.bincount(keys(slice(start, start + _PIECE)), minlength=minlength)
    return counts


def _positions(codes: np.ndarray, size: int) -> np.ndarray:
    """Position of (one occurrence of) each code in ``codes``, -1 where absent; where a code repeats, the position
    written last (its last occurrence: numpy's fancy assignment writes in order, and so do the pieces)."""
    dtype = _index_dtype(codes.size)
    pos = np.full(size, -1, dtype)
    for start in range(0, codes.size, _PIECE):
        stop = min(codes.size, start + _PIECE)
        pos[codes[start:stop]] = np.arange(start, stop, dtype=dtype)
    return pos


def _code_space(ids: Sequence[np.ndarray], successors: Sequence[np.ndarray] = ()) -> tuple[list[np.ndarray], int]:
    """Codes ``[0, size)`` for several id arrays and successor arrays (-1: no successor, kept as -1); returns the
    coded ids, then the coded successors, and ``size``.

    Dense ids (small non-negative integers, see :func:`_dense`) are their own codes: no copy, no sort. Others are
    mapped through one sort of all the values (:func:`numpy.unique`).
    """
    total = sum(a.size for a in ids) + sum(s.size for s in successors)
    values = [a for a in ids if a.size] + [s for s in successors if s.size]
    if not values:
        return [np.asarray(a, np.int64) for a in (*ids, *successors)], 0
    bound = 4 * total + 4096
    dense = all(a.dtype.kind in "iu" for a in values)
    if dense:
        lows = [int(a.min()) for a in ids if a.size] + [int(s.min()) + 1 for s in successors if s.size]
        high = max(int(a.max()) for a in values)
        dense = min(lows) >= 0 and high < bound
    if dense:
        return [*ids, *successors], high + 1
    linked = [s != -1 for s in successors]
    joined = np.concatenate([*ids, *(s[k] for s, k in zip(successors, linked, strict=True))])
    unique, inverse = np.unique(joined, return_inverse=True)
    inverse = inverse.reshape(-1)
    out: list[np.ndarray] = []
    start = 0
    for a in ids:
        out.append(inverse[start : start + a.size])
        start += a.size
    for s, k in zip(successors, linked, strict=True):
        coded = np.full(s.shape, -1, np.int64)
        coded[k] = inverse[start : start + int(np.count_nonzero(k))]
        start += coded[k].size
        out.append(coded)
    return out, int(unique.size)


@dataclass(frozen=True)
class _Shared:
    """The samples two epochs share, listed in the current epoch's order (one occurrence each).

    Attributes:
        cur_positions: Their positions in the current epoch, ascending; None when they are all of its positions.
        prev_positions: Their positions in the previous epoch.
        rank_prev: Their ranks among themselves in the previous epoch (their rank in the current one is their index).
    """

    cur_positions: np.ndarray | None
    prev_positions: np.ndarray
    rank_prev: np.ndarray

    @property
    def size(self) -> int:
        """Samples shared."""
        return int(self.prev_positions.size)


def _shared_samples(*, prev_at: np.ndarray, cur_codes: np.ndarray, prev_count: int) -> _Shared:
    """The shared samples in current order, from ``prev_at`` (each current position's position in the previous
    epoch, -1 where absent). A sample the current epoch repeats counts once, at its last occurrence (as
    :func:`_positions`); ranks come from marks over the previous positions, in O(``prev_count``), no sort.
    """
    present = prev_at >= 0
    n = int(np.count_nonzero(present))
    cur_positions = None if n == prev_at.size else np.flatnonzero(present)
    prev_positions = prev_at if cur_positions is None else prev_at[cur_positions]
    del present
    marks = np.zeros(prev_count, bool)
    marks[prev_positions] = True
    if int(np.count_nonzero(marks)) < n:  # a shared sample repeats in this epoch: keep one occurrence of each
        candidates = np.arange(cur_codes.size) if cur_positions is None else cur_positions
        last = _positions(cur_codes, int(cur_codes.max()) + 1)[cur_codes[candidates]] == candidates
        cur_positions, prev_positions = candidates[last], prev_positions[last]
        n = int(cur_positions.size)
    if n == prev_count:  # every previous position is shared: positions are ranks
        rank_prev = prev_positions
    else:
        rank_prev = (np.cumsum(marks, dtype=_index_dtype(prev_count)) - 1)[prev_positions]
    return _Shared(cur_positions=cur_positions, prev_positions=prev_positions, rank_prev=rank_prev)


@dataclass(frozen=True)
class _Displacement:
    """Sums over the shared samples' rank displacements ``d = r_prev - r_cur`` (exact integers).

    Attributes:
        squares: ``sum d^2`` (Spearman's rho).
        absolute: ``sum |d|`` (Spearman's footrule).
        histogram: Counts of (current rank bin, previous rank bin) pairs, ``bins x bins``, when asked for.
    """

    squares: int
    absolute: int
    histogram: np.ndarray | None


def _displacement(rank_prev: np.ndarray, *, bins: int | None, chunk: int | None = None) -> _Displacement:
    """Exact displacement sums of ranks given in current order (the current rank is the index), and the order map's
    counts in ``bins`` bins per axis (None: none). In chunks small enough that ``sum d^2`` cannot overflow int64 and
    the temporaries stay small (``chunk`` samples at most)."""
    n = int(rank_prev.size)
    chunk = int(min(chunk or 1 << 18, max(1, (2**63 - 1) // max(1, n * n))))
    squares = absolute = 0
    counts = np.zeros(bins * bins if bins else 0, np.int64)
    for start in range(0, n, chunk):
        rank_cur = np.arange(start, min(n, start + chunk), dtype=np.int64)
        prev = rank_prev[start : start + chunk].astype(np.int64)
        d = prev - rank_cur
        squares += int(np.dot(d, d))
        absolute += int(np.abs(d, out=d).sum())
        if bins:
            cells = rank_cur * bins // n * bins + prev * bins // n
            counts += np.bincount(cells, minlength=bins * bins)
    histogram = counts.reshape(bins, bins) if bins else None
    return _Displacement(squares=squares, absolute=absolute, histogram=histogram)


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float(np.sum(counts * (counts - 1.0) / 2.0))


def _modal_size(sizes: np.ndarray) -> int:
    """The most common non-zero value of ``sizes`` (the larger one on a tie), 0 when there is none."""
    sizes = sizes[sizes > 0]
    if not sizes.size:
        return 0
    counts = np.bincount(sizes)
    return int(counts.size - 1 - np.argmax(counts[::-1]))


@dataclass(frozen=True)
class _Groups:
    """The groups of shared samples that sit in one batch in both epochs, two samples or more (a group of one
    holds no pair).

    Attributes:
        sizes: Samples in each group.
        cur_batch: The group's batch in the current epoch.
        prev_batch: Its batch in the previous epoch.
    """

    sizes: np.ndarray
    cur_batch: np.ndarray
    prev_batch: np.ndarray


def _groups_by_sort(cur_batch: np.ndarray, prev_batch: np.ndarray) -> _Groups:
    """:class:`_Groups` from one sort of ``(current batch, previous batch)`` keys (any batch order)."""
    width = int(prev_batch.max()) + 1
    keys = np.sort(cur_batch.astype(np.int64) * width + prev_batch)
    starts = np.flatnonzero(np.diff(keys, prepend=keys[0] - 1))
    sizes = np.diff(np.append(starts, keys.size))
    many = sizes >= 2
    first = keys[starts[many]]
    return _Groups(sizes=sizes[many], cur_batch=first // width, prev_batch=first % width)


def _groups_by_rows(cur_batch: np.ndarray, prev_batch: np.ndarray, sizes_cur: np.ndarray) -> _Groups | None:
    """:class:`_Groups` for samples in current-batch order (``cur_batch`` non-decreasing): each batch's previous
    batches are one row of a table, sorted row by row (short rows: no sort of the whole epoch). None when the table
    would be more than twice the samples (very uneven batches)."""
    batches = np.flatnonzero(sizes_cur)
    lengths = sizes_cur[batches]
    rows, width = int(batches.size), int(lengths.max())
    n = int(cur_batch.size)
    if rows * width > 2 * n + 4096:
        return None
    # Unused cells hold negative values, distinct in a row, so they never form a group.
    table = np.empty((rows, width), prev_batch.dtype if prev_batch.dtype.kind == "i" else np.int64)
    table[:] = -1 - np.arange(width, dtype=table.dtype)
    if rows == 1 or bool(np.all(lengths[:-1] == width)):  # full rows, the last one perhaps shorter
        table.reshape(-1)[:n] = prev_batch
    else:
        row = np.repeat(np.arange(rows), lengths)
        starts = np.cumsum(lengths) - lengths
        table[row, np.arange(n) - np.repeat(starts, lengths)] = prev_batch
        del row
    table.sort(axis=1)
    same = np.zeros((rows, width), bool)  # same[r, c]: cell c + 1 of row r equals cell c (the last column: False)
    np.equal(table[:, 1:], table[:, :-1], out=same[:, :-1])
    linked = np.flatnonzero(same.reshape(-1))
    del same
    if not linked.size:
        empty = np.empty(0, np.int64)
        return _Groups(sizes=empty, cur_batch=empty, prev_batch=empty)
    # Consecutive links form one group: a run of m links is a group of m + 1 samples.
    run_starts = np.flatnonzero(np.diff(linked, prepend=linked[0] - 2) != 1)
    links = np.diff(np.append(run_starts, linked.size))
    first = linked[run_starts]
    return _Groups(
        sizes=links + 1,
        cur_batch=batches[first // width],
        prev_batch=table.reshape(-1)[first].astype(np.int64),
    )


def _batches_at(batches: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``batches[positions]``; for batches of one size ``b`` in order (the last perhaps shorter), as a sampler's
    record is, ``positions // b``: arithmetic instead of a random read of the table per sample."""
    n = int(batches.size)
    if n and batches.dtype.kind in "iu" and int(batches[0]) == 0:
        b = int(np.searchsorted(batches, 0, side="right"))  # the first batch's size, if in order (checked below)
        starts, ends = batches[::b], batches[b - 1 :: b]
        if (
            int(batches[-1]) == (n - 1) // b
            and np.array_equal(starts, np.arange(starts.size))
            and np.array_equal(ends, np.arange(ends.size))
            and bool(np.all(batches[1:] >= batches[:-1]))
        ):
            return positions // b
    return batches[positions]


@dataclass(frozen=True)
class _Cobatch:
    """Same-batch pairs of the shared samples in two epochs, and batches identical as sets (see
    :class:`OrderStats`)."""

    together: float = 0.0
    pairs_cur: float = 0.0
    pairs_prev: float = 0.0
    batches: int = 0
    batch_size: int = 0
    full_batches: tuple[int, int] = (0, 0)
    identical: int = 0


def _cobatch(*, cur_batch: np.ndarray, prev_batch: np.ndarray) -> _Cobatch:
    """Co-batch counts of the shared samples, given their batch in each epoch (listed in current order)."""
    n = int(cur_batch.size)
    sizes_cur = bincount(n, lambda piece: cur_batch[piece], minlength=int(cur_batch.max()) + 1)
    sizes_prev = bincount(n, lambda piece: prev_batch[piece], minlength=int(prev_batch.max()) + 1)
    groups = None
    if n < 2 or bool(np.all(cur_batch[1:] >= cur_batch[:-1])):
        groups = _groups_by_rows(cur_batch, prev_batch, sizes_cur)
    if groups is None:
        groups = _groups_by_sort(cur_batch, prev_batch)
    batch_size, full, identical = 0, (0, 0), 0
    # A batch is identical as a set when all of it sits in one batch of the previous epoch that holds nothing
    # else; counted among the batches of the common size of both epochs.
    size_cur, size_prev = _modal_size(sizes_cur), _modal_size(sizes_prev)
    if size_cur == size_prev and size_cur >= 2:
        batch_size = size_cur
        full = (int(np.count_nonzero(sizes_cur == batch_size)), int(np.count_nonzero(sizes_prev == batch_size)))
        same = (groups.sizes == batch_size) & (sizes_cur[groups.cur_batch] == batch_size)
        same &= sizes_prev[groups.prev_batch] == batch_size
        identical = int(np.count_nonzero(same))
    return _Cobatch(
        together=_pairs(groups.sizes),
        pairs_cur=_pairs(sizes_cur),
        pairs_prev=_pairs(sizes_prev),
        batches=int(np.count_nonzero(sizes_cur)),
        batch_size=batch_size,
        full_batches=full,
        identical=identical,
    )


@dataclass(frozen=True)
class _Successors:
    """Successor counts (see :class:`OrderStats`): ``preserved`` of ``pairs``, and ``reversed``."""

    preserved: int
    pairs: int
    reversed: int


def _next_entries(codes: np.ndarray, successors: np.ndarray) -> bool:
    """Whether each position's successor is the next position's id (the last has none)."""
    return bool(successors.size == codes.size and (not codes.size or successors[-1] == -1)) and bool(
        np.array_equal(successors[:-1], codes[1:])
    )


def _successor_counts(
    *,
    prev_codes: np.ndarray,
    prev_successors: np.ndarray,
    cur_codes: np.ndarray,
    cur_successors: np.ndarray,
    prev_at: np.ndarray,
    prev_distinct: bool,
    size: int,
) -> _Successors:
    """Among the current positions with a successor whose sample had a successor in the previous epoch, how many
    kept the same one; and how many are now followed by the sample that preceded them (a reversal).

    ``prev_at`` is each current position's position in the previous epoch (-1: absent). When both epochs follow
    their own order (successor = next id) and the previous one repeats no sample, these are neighbour tests on
    ``prev_at``: ``prev_at[i + 1] == prev_at[i] + 1`` (kept) and ``prev_at[i] == prev_at[i + 1] + 1`` (reversed).
    Otherwise the previous successor of each id comes from a table (a repeated id: its last occurrence with one).
    """
    if prev_distinct and _next_entries(prev_codes, prev_successors) and _next_entries(cur_codes, cur_successors):
        here, after = prev_at[:-1], prev_at[1:]
        last = prev_codes.size - 1
        pairs = int(np.count_nonzero((here >= 0) & (here < last)))
        preserved = int(np.count_nonzero((here >= 0) & (after == here + 1)))
        reversed_ = int(np.count_nonzero((after >= 0) & (here == after + 1)))
        return _Successors(preserved=preserved, pairs=pairs, reversed=reversed_)
    table = np.full(size, -1, prev_successors.dtype if prev_successors.dtype.kind == "i" else np.int64)
    has = prev_successors >= 0
    table[prev_codes[has]] = prev_successors[has]
    has = cur_successors >= 0
    now, nxt = cur_codes[has], cur_successors[has]
    known = table[now]
    valid = known >= 0
    preserved = int(np.count_nonzero(known[valid] == nxt[valid]))
    return _Successors(
        preserved=preserved, pairs=int(np.count_nonzero(valid)), reversed=int(np.count_nonzero(table[nxt] == now))
    )


def order_stats(
    prev_ids: np.ndarray,
    prev_batches: np.ndarray,
    cur_ids: np.ndarray,
    cur_batches: np.ndarray,
    prev_successors: np.ndarray | None = None,
    cur_successors: np.ndarray | None = None,
    order_map: bool = False,
) -> OrderStats:
    """Compare two epochs' orders: Spearman and footrule of positions, co-batch pairs and identical batches, and
    preserved (or reversed) successors.

    ``*_ids`` are in presentation order and ``*_batches`` give each position's batch. ``*_successors`` give the id
    that followed each position (-1 for none); by default the next entry of ``*_ids``, but a subsampled record
    keeps the true successor of each kept sample. ``order_map=True`` also returns the order map (see
    :class:`OrderStats`), from the ranks computed anyway. A sample an epoch repeats is compared at its last
    occurrence.

    Formulas (``n`` shared samples, ``r`` their position ranks):
    ``rho = 1 - 6 sum (r_prev - r_cur)^2 / (n (n^2 - 1))``; ``footrule = sum |r_prev - r_cur|``;
    ``cobatch_ratio = T / (C * P / binom(n, 2))`` with ``T`` the pairs together in both epochs, ``C`` and ``P`` the
    pairs together in the current and previous epoch.

    Cost: O(N) time and memory, no sort of the epoch for dense ids (dataset indices): the shared samples are walked
    in current order, their previous positions read from one table, their ranks from marks, the co-batch groups
    from a row-by-row sort of each batch's previous batches, the sums in exact integers.

    Example:
        >>> ids = np.arange(40)
        >>> batches = ids // 8
        >>> same = order_stats(ids, batches, ids, batches)
        >>> round(same.spearman, 3), same.successors_preserved, round(same.cobatch_ratio, 2), same.footrule
        (1.0, 39, 5.57, 0.0)
        >>> reordered = np.concatenate([ids[8:], ids[:8]])  # the same batches in a new batch order
        >>> s = order_stats(ids, batches, reordered, batches)
        >>> round(s.cobatch_ratio, 2), s.cobatch_share, s.identical_batches, s.full_batches, s.spearman < 1.0
        (5.57, 1.0, 5, (5, 5), True)
        >>> order_stats(ids, batches, ids[::-1], batches).successors_reversed
        39
    """
    prev_ids, cur_ids = np.asarray(prev_ids), np.asarray(cur_ids)
    if prev_successors is None:
        prev_successors = np.append(prev_ids[1:], -1) if prev_ids.size else prev_ids
    if cur_successors is None:
        cur_successors = np.append(cur_ids[1:], -1) if cur_ids.size else cur_ids
    (prev_codes, cur_codes, prev_next, cur_next), size = _code_space(
        [prev_ids, cur_ids], [np.asarray(prev_successors), np.asarray(cur_successors)]
    )
    nan = float("nan")
    if size == 0:
        return OrderStats(shared=0, spearman=nan, cobatch_ratio=nan, cobatch_expected=0.0, successors_preserved=0,
                          successor_pairs=0)  # fmt: skip
    prev_table = _positions(prev_codes, size)
    prev_distinct = int(np.count_nonzero(prev_table >= 0)) == prev_codes.size
    prev_at = take(prev_table, cur_codes)  # each current position's position in the previous epoch (-1: absent)
    successors = _successor_counts(
        prev_codes=prev_codes,
        prev_successors=prev_next,
        cur_codes=cur_codes,
        cur_successors=cur_next,
        prev_at=prev_at,
        prev_distinct=prev_distinct,
        size=size,
    )
    del prev_table
    shared = _shared_samples(prev_at=prev_at, cur_codes=cur_codes, prev_count=prev_codes.size)
    del prev_at
    n = shared.size
    spearman = footrule = nan
    histogram = None
    cobatch = _Cobatch()
    if n >= 2:
        bins = order_map_bins(n) if order_map else None
        moved = _displacement(shared.rank_prev, bins=bins)
        if n >= MIN_ORDER_SAMPLES:
            spearman = 1.0 - 6.0 * float(moved.squares) / (n * (float(n) ** 2 - 1.0))
            footrule = float(moved.absolute)
        if bins and moved.histogram is not None:
            histogram = moved.histogram * (bins * bins / n)
        cur_batches = np.asarray(cur_batches)
        cobatch = _cobatch(
            cur_batch=cur_batches if shared.cur_positions is None else cur_batches[shared.cur_positions],
            prev_batch=_batches_at(np.asarray(prev_batches), shared.prev_positions),
        )
    cobatch_expected = cobatch.pairs_cur * cobatch.pairs_prev / (n * (n - 1) / 2.0) if n >= 2 else 0.0
    return OrderStats(
        shared=n,
        spearman=spearman,
        cobatch_ratio=cobatch.together / cobatch_expected if cobatch_expected > 0 else nan,
        cobatch_expected=cobatch_expected,
        successors_preserved=successors.preserved,
        successor_pairs=successors.pairs,
        footrule=footrule,
        successors_reversed=successors.reversed,
        cobatch_together=cobatch.together,
        cobatch_pairs=cobatch.pairs_cur,
        batch_size=cobatch.batch_size,
        full_batches=cobatch.full_batches,
        identical_batches=cobatch.identical,
        batches=cobatch.batches,
        order_map=histogram,
    )


def spearman_threshold(n: int) -> float:
    """Largest ``|rho|`` a fresh shuffle reaches: ``min(0.99, Z / sqrt(n - 1))`` (inf below the minimum ``n``).

    The cap at 0.99 lets small epochs be judged: with ``n >= 10`` only near-identical orders reach it, which a fresh
    shuffle produces with probability below ``10 / n!``.

    Example:
        >>> round(spearman_threshold(1437), 3), spearman_threshold(10), spearman_threshold(5)
        (0.158, 0.99, inf)
    """
    if n < MIN_ORDER_SAMPLES:
        return float("inf")
    return min(0.99, FLAG_SIGMAS / float(np.sqrt(n - 1)))


def poisson_tail(k: int, mu: float) -> float:
    """``P(X >= k)`` for ``X ~ Poisson(mu)``, by a short series of the pmf (no scipy).

    For ``k > mu`` the terms from ``k`` on fall at least geometrically, so the upper series is summed; otherwise
    one minus the lower series (terms from ``k - 1`` down).

    Example:
        >>> round(poisson_tail(5, 0.5), 6), poisson_tail(0, 3.0), round(poisson_tail(1, 1.0), 4)
        (0.000172, 1.0, 0.6321)
    """
    if k <= 0:
        return 1.0
    if mu <= 0:
        return 0.0

    def pmf(j: int) -> float:
        return math.exp(-mu + j * math.log(mu) - math.lgamma(j + 1))

    total = 0.0
    if k > mu:
        j, term = k, pmf(k)
        while term > 0 and term > total * 1e-17:
            total += term
            j += 1
            term *= mu / j
        return min(1.0, total)
    j, term = k - 1, pmf(k - 1)
    while j >= 0 and term > 0 and term > total * 1e-17:
        total += term
        term *= j / mu
        j -= 1
    return max(0.0, 1.0 - total)


def cobatch_threshold(expected_pairs: float) -> float:
    """Largest co-batch ratio a fresh shuffle reaches: ``max(2, (k - 1/2) / expected_pairs)``, with ``k`` the
    smallest count of re-met pairs whose Poisson(``expected_pairs``) tail is below :data:`TAIL` (1e-9).

    The count is an integer, so ``ratio > threshold`` means ``count >= k``. The floor 2 keeps the finding about a
    material share of pairs when many pairs are expected.

    Example:
        >>> cobatch_threshold(1950.0), cobatch_threshold(4.0), cobatch_threshold(0.5)  # 2, 22 and 10 pairs
        (2.0, 5.375, 19.0)
    """
    if expected_pairs <= 0:
        return float("inf")
    mu = float(expected_pairs)
    k = max(1, math.ceil(2.0 * mu))
    if poisson_tail(k, mu) < TAIL:
        return 2.0
    while poisson_tail(k, mu) >= TAIL:
        k += 1
    return max(2.0, (k - 0.5) / mu)


def successor_threshold(pairs: int) -> float:
    """Smallest preserved-successor count that is flagged: ``max(13, 0.05 * pairs)``.

    Under a fresh shuffle the count is close to Poisson(1), so 13 has probability below 1e-9; the 5% floor keeps
    the finding about a material share of the order.

    Example:
        >>> successor_threshold(100), successor_threshold(1436)
        (13.0, 71.8)
    """
    return max(float(MIN_SUCCESSOR_COUNT), 0.05 * pairs)


def replay_successor_threshold(pairs: int) -> float:
    """Smallest count of preserved (or reversed) successors that says the order came back, whatever the shuffle's
    design: ``max(13, REPLAY_SHARE * pairs)``.

    Under a fresh shuffle the count is close to Poisson(1), so 13 has probability below 1e-9. A block shuffle keeps a
    successor only inside a block it reorders: ``(m - 1) / m`` successors per block of ``m``, about ``1 / m`` of them
    (1/4 for blocks of 2, 3/16 for blocks of 4), and half of them is a material share a reshuffle does not keep.

    Example:
        >>> replay_successor_threshold(20), replay_successor_threshold(1999)
        (13.0, 999.5)
    """
    return max(float(MIN_SUCCESSOR_COUNT), REPLAY_SHARE * pairs)


def order_replayed(stats: OrderStats) -> str | None:
    """How the order came back, whatever the shuffle's design: ``"identical"`` (Spearman >= 0.9 and most successors
    kept), ``"reversed"`` (Spearman <= -0.9 and most samples now followed by their predecessor), ``"shifted"`` (most
    successors kept, positions moved: a rotation or a shift), or None.

    Example:
        >>> ids = np.arange(100)
        >>> order_replayed(order_stats(ids, ids // 10, ids, ids // 10))
        'identical'
        >>> order_replayed(order_stats(ids, ids // 10, np.roll(ids, 37), ids // 10))
        'shifted'
        >>> order_replayed(order_stats(ids, ids // 10, np.random.default_rng(0).permutation(100), ids // 10)) is None
        True
    """
    threshold = replay_successor_threshold(stats.successor_pairs)
    rho = stats.spearman
    if stats.successor_pairs and stats.successors_preserved >= threshold:
        return "identical" if rho >= 0.9 else "shifted"
    if stats.successor_pairs and stats.successors_reversed >= threshold and rho <= -0.9:
        return "reversed"
    return None


def footrule_null(n: int) -> tuple[float, float]:
    """Mean and standard deviation of Spearman's footrule ``sum |r_prev - r_cur|`` between two independent uniform
    orders of ``n`` samples: ``(n^2 - 1) / 3`` and ``sqrt((n + 1)(2 n^2 + 7) / 45)`` (Diaconis and Graham, 1977).

    Example:
        >>> mean, sd = footrule_null(100)
        >>> round(mean, 1), round(sd, 1)
        (3333.0, 211.9)
    """
    if n < 2:
        return 0.0, 0.0
    return (n * n - 1.0) / 3.0, math.sqrt((n + 1.0) * (2.0 * n * n + 7.0) / 45.0)


def displacement_flagged(footrule: float, n: int) -> bool:
    """Whether samples moved too little for a fresh shuffle: mean displacement at most :data:`WEAK_DISPLACEMENT`
    (half) of a fresh shuffle's, and the footrule more than :data:`FLAG_SIGMAS` standard deviations below its mean.

    A block shuffle that moves blocks moves their samples as far as a fresh shuffle does (a displacement near 1);
    a small shuffle buffer, or a few interleaved shards, keep every sample near its previous place.

    Example:
        >>> mean, _ = footrule_null(1000)
        >>> displacement_flagged(0.1 * mean, 1000), displacement_flagged(0.9 * mean, 1000)
        (True, False)
        >>> displacement_flagged(0.0, 5)  # too few samples for 6 sd
        False
    """
    mean, sd = footrule_null(n)
    if n < MIN_ORDER_SAMPLES or not footrule <= WEAK_DISPLACEMENT * mean:
        return False
    return mean - footrule > FLAG_SIGMAS * sd


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def identical_batches_bound(identical: int, full: tuple[int, int], n: int, size: int) -> float:
    """Upper bound on the probability that a fresh shuffle of ``n`` samples repeats ``identical`` or more of the
    previous epoch's batches of ``size`` as sets (``full``: batches of that size now and before).

    Exact union bound: with ``J`` the repeated batches, ``P(J >= j) <= E[binom(J, j)] =
    binom(k_now, j) * k_before! / (k_before - j)! * prod_{l < j} 1 / binom(n - l * size, size)``, since a fresh
    shuffle's batches are a uniformly random partition. This holds for any number of batches, where the Poisson tail
    of re-met pairs fails for few: two batches of 10 repeat their partition with probability 1.08e-5, so one epoch of
    them can never show a replay at 1e-9.

    Example:
        >>> f"{identical_batches_bound(2, (2, 2), 20, 10):.3g}"
        '1.08e-05'
        >>> identical_batches_bound(3, (3, 3), 30, 10) < 1e-9
        True
        >>> identical_batches_bound(0, (3, 3), 30, 10)
        1.0
    """
    k_now, k_before = full
    if identical <= 0:
        return 1.0
    if identical > min(k_now, k_before) or size < 1:
        return 0.0
    log_p = _log_binom(k_now, identical) + math.lgamma(k_before + 1) - math.lgamma(k_before - identical + 1)
    for step in range(identical):
        if n - step * size < size:
            return 0.0
        log_p -= _log_binom(n - step * size, size)
    return min(1.0, math.exp(log_p))


def cobatch_flagged(stats: OrderStats) -> bool:
    """Whether batches re-met more than a fresh shuffle allows (tail below 1e-9): batches identical as sets with
    :func:`identical_batches_bound` below :data:`TAIL` when there are :data:`FEW_BATCHES` or fewer, else a co-batch
    ratio above :func:`cobatch_threshold`.

    Example:
        >>> ids = np.arange(20)
        >>> cobatch_flagged(order_stats(ids, ids // 10, ids[::-1], ids // 10))  # 2 batches of 10: never evidence
        False
        >>> ids = np.arange(400)
        >>> cobatch_flagged(order_stats(ids, ids // 16, np.roll(ids, 16), ids // 16))
        True
    """
    if stats.batches <= FEW_BATCHES:
        return stats.identical_batches > 0 and (
            identical_batches_bound(stats.identical_batches, stats.full_batches, stats.shared, stats.batch_size) < TAIL
        )
    return not np.isnan(stats.cobatch_ratio) and stats.cobatch_ratio > cobatch_threshold(stats.cobatch_expected)


def batches_replayed(stats: OrderStats) -> bool:
    """Whether the same batches came back, whatever the shuffle's design: at least :data:`BATCH_REPLAY_SHARE` of
    this epoch's full batches identical as sets to batches of the previous one (with :func:`identical_batches_bound`
    below :data:`TAIL`), or, with more than :data:`FEW_BATCHES` batches, at least :data:`BATCH_REPLAY_SHARE` of the
    same-batch pairs meeting again (and :func:`cobatch_flagged`).

    Example:
        >>> ids = np.arange(400)
        >>> batches_replayed(order_stats(ids, ids // 16, np.roll(ids, 16), ids // 16))  # batches in a new order
        True
        >>> batches_replayed(order_stats(ids, ids // 16, np.roll(ids, 8), ids // 16))  # half of each batch moved
        False
        >>> ids = np.arange(40)  # 4 batches of 10, 3 of them back as sets: exact evidence though few batches
        >>> batches_replayed(order_stats(ids, ids // 10, np.concatenate([ids[10:], ids[:10][::-1]]), ids // 10))
        True
    """
    k = stats.full_batches[0]
    j = stats.identical_batches
    bound = identical_batches_bound(j, stats.full_batches, stats.shared, stats.batch_size)
    if j and j >= math.ceil(BATCH_REPLAY_SHARE * k) and bound < TAIL:
        return True
    share = stats.cobatch_share
    return stats.batches > FEW_BATCHES and share >= BATCH_REPLAY_SHARE and cobatch_flagged(stats)


@dataclass(frozen=True)
class LabelStats:
    """Label runs of one stream against a fresh shuffle of the same labels.

    Attributes:
        changes: Adjacent positions whose labels differ.
        pairs: Adjacent positions.
        expected_change_rate: ``1 - sum_k n_k (n_k - 1) / (n (n - 1))``.
        batch_entropy: Mean label entropy (bits) of the full-size batches (nan when none).
        expected_batch_entropy: Mean entropy of a random batch of that size (seeded Monte-Carlo).
        entropy_sd: Standard deviation of a random batch's entropy.
        batches: Full-size batches measured.
        entropy_floor: The lowest mean entropy a fresh shuffle reaches, from the G-test of batch against label
            (see :func:`entropy_floor`).
    """

    changes: int
    pairs: int
    expected_change_rate: float
    batch_entropy: float
    expected_batch_entropy: float
    entropy_sd: float
    batches: int
    entropy_floor: float = float("nan")

    @property
    def change_rate(self) -> float:
        """``changes / pairs`` (nan without pairs)."""
        return self.changes / self.pairs if self.pairs else float("nan")


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=-1)


def label_stats(labels: np.ndarray, batches: np.ndarray, draws: int = 256, within_batches: bool = False) -> LabelStats:
    """Label-change rate and per-batch label entropy of a stream, with their expectations under a fresh shuffle.

    Only batches of the most common size are compared (a last, smaller batch has a different expectation).
    ``within_batches=True`` counts label changes only between neighbours in the same batch, for a stream made of
    whole batches picked from a longer epoch (under a shuffle they have the same expectation).

    Example:
        >>> labels = np.repeat(np.arange(4), 16)  # sorted by label
        >>> s = label_stats(labels, np.arange(64) // 8)
        >>> round(s.change_rate, 3), round(s.expected_change_rate, 3), s.batch_entropy
        (0.048, 0.762, 0.0)
    """
    labels = np.asarray(labels)
    batches = np.asarray(batches)
    n = int(labels.size)
    nan = float("nan")
    if n < 2:
        return LabelStats(0, 0, nan, nan, nan, nan, 0)
    if labels.dtype.kind in "iu" and int(labels.min()) >= 0 and int(labels.max()) < 1 << 15:
        codes = labels  # class indices already: no sort, no copy
    else:
        codes = np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)
    k = int(codes.max()) + 1
    class_counts = bincount(n, lambda piece: codes[piece], minlength=k).astype(np.float64)
    differ = codes[1:] != codes[:-1]
    pairs = n - 1
    if within_batches:
        same = batches[1:] == batches[:-1]
        differ &= same
        pairs = int(np.count_nonzero(same))
    changes = int(np.count_nonzero(differ))
    expected_rate = 1.0 - float(np.sum(class_counts * (class_counts - 1.0))) / (n * (n - 1.0))

    per_batch = bincount(n, lambda piece: batches[piece], minlength=int(batches.max()) + 1)
    size = int(np.bincount(per_batch[per_batch > 0]).argmax())
    full = np.flatnonzero(per_batch == size)
    entropy = expected = sd = floor = nan
    if size >= 2 and full.size:
        key_type = np.int32 if per_batch.size * k < 2**31 else np.int64
        table = bincount(
            n, lambda piece: batches[piece].astype(key_type) * k + codes[piece], minlength=per_batch.size * k
        )
        table = table.reshape(per_batch.size, k)[full]
        entropy = float(_entropy_bits(table).mean())
        # The entropy of a batch drawn without replacement from these labels: multivariate hypergeometric counts.
        rng = np.random.default_rng(0)
        sample = rng.multivariate_hypergeometric(class_counts.astype(np.int64), size, size=draws)
        random_entropy = _entropy_bits(sample)
        expected, sd = float(random_entropy.mean()), float(random_entropy.std(ddof=1))
        floor = entropy_floor(table)
    return LabelStats(changes, pairs, expected_rate, entropy, expected, sd, int(full.size), floor)


def entropy_floor(table: np.ndarray) -> float:
    """Lowest mean batch entropy (bits) a fresh shuffle reaches, for a ``batches x classes`` count table of
    equal-size batches; -inf when no shuffle could be flagged.

    With equal batches the mean entropy is ``H - I``, ``H`` the entropy of the pooled labels and ``I`` the mutual
    information of batch and label, and ``G = 2 ln(2) N I`` is the G-test statistic of their independence,
    chi-square with ``df = (batches - 1)(classes - 1)`` under a shuffle. The floor is
    ``H - x / (2 ln(2) N)`` with ``x`` the Wilson-Hilferty chi-square quantile at ``Z`` standard deviations
    (a tail of about 1e-9). Unlike a normal margin on the mean entropy, this follows the heavy lower tail of a few
    bounded, skewed batch entropies (two batches of two classes are complements: 12 balanced labels in two batches
    of 6 are both pure with probability 2.2e-3, which the normal margin flagged).

    Example:
        >>> round(entropy_floor(np.array([[3, 3], [3, 3]])), 2)  # 2 batches of 6: even pure batches are not flagged
        -1.82
        >>> round(entropy_floor(np.full((12, 4), 4)), 2)  # 12 batches of 16, 4 classes
        1.59
    """
    table = np.asarray(table, np.float64)
    n = float(table.sum())
    totals = table.sum(axis=0)
    df = (table.shape[0] - 1) * (int(np.count_nonzero(totals)) - 1)
    if df < 1 or n <= 0:
        return -float("inf")
    pooled = float(_entropy_bits(totals))
    x = df * (1.0 - 2.0 / (9.0 * df) + FLAG_SIGMAS * math.sqrt(2.0 / (9.0 * df))) ** 3
    return pooled - x / (2.0 * math.log(2.0) * n)


def change_rate_flagged(changes: int, pairs: int, expected_rate: float) -> bool:
    """Whether a label-change rate is too low for a shuffle: below ``q - Z sqrt(2 q (1 - q) / pairs)`` and ``0.9 q``.

    The factor 2 covers the positive correlation of adjacent change indicators.

    Example:
        >>> change_rate_flagged(3, 63, 0.76), change_rate_flagged(48, 63, 0.76)
        (True, False)
    """
    if pairs < 1 or not expected_rate > 0:
        return False
    rate = changes / pairs
    q = expected_rate
    return rate < q - FLAG_SIGMAS * float(np.sqrt(2.0 * q * (1.0 - q) / pairs)) and rate < 0.9 * q


def entropy_flagged(
    entropy: float, expected: float, sd: float, batches: int, draws: int = 256, floor: float = float("nan")
) -> bool:
    """Whether batches are too label-homogeneous: mean entropy below ``E - Z sd sqrt(1/batches + 1/draws)``, below
    ``0.9 E`` and, when given, below ``floor`` (:func:`entropy_floor`, the G-test bound that holds with few batches).

    The normal margin alone is not enough with few batches: a batch's entropy is bounded and skewed (with two
    batches of two classes they are complements), so a healthy shuffle falls below it with probability ~1e-3.

    Example:
        >>> entropy_flagged(0.0, 1.9, 0.2, batches=8), entropy_flagged(1.88, 1.9, 0.2, batches=8)
        (True, False)
        >>> entropy_flagged(0.0, 1.9, 0.2, batches=8, floor=-0.3)  # below every mean a shuffle could give
        False
    """
    if batches < 1 or not expected > 0 or np.isnan(entropy):
        return False
    if not np.isnan(floor) and not entropy < floor:
        return False
    margin = FLAG_SIGMAS * sd * float(np.sqrt(1.0 / batches + 1.0 / draws))
    return entropy < expected - margin and entropy < 0.9 * expected


def coverage_slack(expected: int, fraction: float, padding: int = 0) -> float:
    """How many fewer distinct samples than ``fraction * expected`` a healthy epoch may show:
    ``Z sqrt(E f (1 - f)) + padding * f``.

    Exact (0, padding aside) when nothing is subsampled; otherwise the kept subset's count is binomial around
    ``f * E``, and ``Z`` standard deviations bound it at about 1e-9.

    Example:
        >>> coverage_slack(1000, 1.0), round(coverage_slack(10_000, 0.1), 1), coverage_slack(1000, 1.0, padding=1)
        (0.0, 180.0, 1.0)
    """
    return FLAG_SIGMAS * math.sqrt(expected * fraction * (1.0 - fraction)) + padding * fraction


def overlap_allowance(padding: int, fraction: float = 1.0) -> float:
    """Samples a healthy epoch may show on more than one rank: the ``DistributedSampler`` padding (its first
    samples repeated to even out the ranks), ``padding * f + Z sqrt(padding * f)`` when subsampled.

    Example:
        >>> overlap_allowance(1), overlap_allowance(0), round(overlap_allowance(100, 0.25), 1)
        (1.0, 0.0, 55.0)
    """
    kept = padding * fraction
    return kept + (FLAG_SIGMAS * math.sqrt(kept) if fraction < 1.0 else 0.0)


def pooled_label_stats(stats: Sequence[LabelStats]) -> LabelStats:
    """Label statistics of several ranks' streams as one: changes and pairs summed, the expected change rate and
    batch entropies weighted by pairs and batches, the largest entropy sd, and the batch-weighted entropy floor
    (each rank's mean is at or above its floor under a shuffle, so their weighted mean is at or above the weighted
    floor; a rank without a floor contributes its expectation).

    Example:
        >>> a = LabelStats(10, 20, 0.5, 1.0, 1.0, 0.1, 4, 0.6)
        >>> b = LabelStats(30, 40, 0.8, 0.5, 1.0, 0.2, 4)
        >>> p = pooled_label_stats([a, b])
        >>> p.changes, p.pairs, round(p.expected_change_rate, 2), p.batch_entropy, p.entropy_sd, p.entropy_floor
        (40, 60, 0.7, 0.75, 0.2, 0.8)
    """
    nan = float("nan")
    if len(stats) == 1:
        return stats[0]
    changes = sum(s.changes for s in stats)
    pairs = sum(s.pairs for s in stats)
    q = sum(s.expected_change_rate * s.pairs for s in stats if s.pairs) / pairs if pairs else nan
    with_batches = [s for s in stats if s.batches and not np.isnan(s.batch_entropy)]
    nb = sum(s.batches for s in with_batches)
    if not nb:
        return LabelStats(changes, pairs, q, nan, nan, nan, 0)
    h = sum(s.batch_entropy * s.batches for s in with_batches) / nb
    e = sum(s.expected_batch_entropy * s.batches for s in with_batches) / nb
    sd = max(s.entropy_sd for s in with_batches)
    floor = nan
    if any(not np.isnan(s.entropy_floor) for s in with_batches):
        floor = (
            sum(
                (s.expected_batch_entropy if np.isnan(s.entropy_floor) else s.entropy_floor) * s.batches
                for s in with_batches
            )
            / nb
        )
    return LabelStats(changes, pairs, q, h, e, sd, nb, floor)


def keep_mask(ids: np.ndarray, fraction: float) -> np.ndarray:
    """A fixed pseudo-random subset of ids (splitmix64 hash), the same on every rank and in every epoch.

    Example:
        >>> ids = np.arange(100_000)
        >>> round(float(keep_mask(ids, 0.1).mean()), 2), bool(keep_mask(ids, 1.0).all())
        (0.1, True)
    """
    ids = np.asarray(ids)
    if fraction >= 1.0:
        return np.ones(ids.shape, bool)
    out = np.empty(ids.shape, bool)
    limit = np.uint64(min(fraction, 1.0) * 2.0**53)
    step = 1 << 20  # chunks keep the uint64 temporaries small
    with np.errstate(over="ignore"):
        for start in range(0, ids.size, step):
            z = ids[start : start + step].astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            out[start : start + step] = (z >> np.uint64(11)) < limit
    return out
