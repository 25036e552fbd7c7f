"""``order_stats`` (vectorised: one position table, marks for ranks, a row-by-row sort of the co-batch groups, exact
integer sums) against a reference written from the definitions with dicts and Counters, on random epochs of every
shape the audit meets: permutations, repeats, partial overlap, sparse ids (fingerprints), rotations, reversed and
block-shuffled orders, uneven and unordered batches, subsampled records with their true successors. Every field must
be equal, bit for bit (Spearman's rho from the exact sum of squares)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from epochkit.audit import functional as F
from epochkit.audit import images

FIELDS = (
    "shared",
    "spearman",
    "cobatch_ratio",
    "cobatch_expected",
    "successors_preserved",
    "successor_pairs",
    "footrule",
    "successors_reversed",
    "cobatch_together",
    "cobatch_pairs",
    "batch_size",
    "full_batches",
    "identical_batches",
    "batches",
)


def _reference(
    prev: np.ndarray,
    prev_batches: np.ndarray,
    cur: np.ndarray,
    cur_batches: np.ndarray,
    prev_next: np.ndarray | None,
    cur_next: np.ndarray | None,
    bins: int | None,
) -> dict:
    """The statistics from their definitions; a sample an epoch repeats is taken at its last occurrence."""
    nan = float("nan")
    prev_l, cur_l = prev.tolist(), cur.tolist()
    prev_next_l = [*prev_l[1:], -1][: len(prev_l)] if prev_next is None else prev_next.tolist()
    cur_next_l = [*cur_l[1:], -1][: len(cur_l)] if cur_next is None else cur_next.tolist()
    where_prev = {s: i for i, s in enumerate(prev_l)}
    where_cur = {s: i for i, s in enumerate(cur_l)}
    shared = sorted(set(where_prev) & set(where_cur))
    n = len(shared)
    rank_prev = {s: r for r, s in enumerate(sorted(shared, key=where_prev.__getitem__))}
    rank_cur = {s: r for r, s in enumerate(sorted(shared, key=where_cur.__getitem__))}
    out: dict = {"shared": n, "spearman": nan, "footrule": nan, "order_map": None}
    if n >= F.MIN_ORDER_SAMPLES:
        squares = sum((rank_prev[s] - rank_cur[s]) ** 2 for s in shared)
        out["spearman"] = 1.0 - 6.0 * float(squares) / (n * (float(n) ** 2 - 1.0))
        out["footrule"] = float(sum(abs(rank_prev[s] - rank_cur[s]) for s in shared))
    if bins and n >= 2:
        cells = np.zeros((bins, bins), np.int64)
        for s in shared:
            cells[rank_cur[s] * bins // n, rank_prev[s] * bins // n] += 1
        out["order_map"] = cells * (bins * bins / n)

    together = pairs_cur = pairs_prev = 0.0
    size, full, identical, batches = 0, (0, 0), 0, 0
    if n >= 2:
        b_cur = {s: int(cur_batches[where_cur[s]]) for s in shared}
        b_prev = {s: int(prev_batches[where_prev[s]]) for s in shared}
        sizes_cur, sizes_prev = Counter(b_cur.values()), Counter(b_prev.values())
        groups = Counter((b_cur[s], b_prev[s]) for s in shared)
        together = float(sum(c * (c - 1) // 2 for c in groups.values()))
        pairs_cur = float(sum(c * (c - 1) // 2 for c in sizes_cur.values()))
        pairs_prev = float(sum(c * (c - 1) // 2 for c in sizes_prev.values()))
        batches = len(sizes_cur)

        def modal(sizes: Counter) -> int:
            often = Counter(sizes.values())
            return max(often, key=lambda k: (often[k], k))

        if modal(sizes_cur) == modal(sizes_prev) >= 2:
            size = modal(sizes_cur)
            full = (sum(v == size for v in sizes_cur.values()), sum(v == size for v in sizes_prev.values()))
            identical = sum(
                c == size and sizes_cur[bc] == size and sizes_prev[bp] == size for (bc, bp), c in groups.items()
            )
    expected = pairs_cur * pairs_prev / (n * (n - 1) / 2.0) if n >= 2 else 0.0

    succ_prev = {s: t for s, t in zip(prev_l, prev_next_l, strict=True) if t != -1}
    preserved = pairs = reversed_ = 0
    for s, t in zip(cur_l, cur_next_l, strict=True):
        if t == -1:
            continue
        if s in succ_prev:
            pairs += 1
            preserved += succ_prev[s] == t
        reversed_ += succ_prev.get(t) == s
    out.update(
        cobatch_ratio=together / expected if expected > 0 else nan,
        cobatch_expected=expected,
        successors_preserved=preserved,
        successor_pairs=pairs,
        successors_reversed=reversed_,
        cobatch_together=together,
        cobatch_pairs=pairs_cur,
        batch_size=size,
        full_batches=full,
        identical_batches=identical,
        batches=batches,
    )
    return out


def _epoch(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    pool = int(rng.integers(1, 2 * n + 2))
    if kind == "permutation":
        return rng.permutation(n)
    if kind == "repeats":
        return rng.integers(0, pool, n)
    if kind == "partial":
        return rng.choice(pool, min(n, pool), replace=False)
    if kind == "sparse":  # content fingerprints: large, signed
        return rng.integers(-(2**62), 2**62, n) if rng.random() < 0.5 else rng.permutation(n) * 1_000_003
    if kind == "rotated":
        return np.roll(np.arange(n), int(rng.integers(0, max(1, n))))
    size = int(rng.integers(1, 9))  # blocks in a new order, perhaps reversed
    blocks = [np.arange(start, min(n, start + size)) for start in range(0, n, size)]
    order = rng.permutation(len(blocks))
    ids = np.concatenate([blocks[i] for i in order]) if blocks else np.arange(0)
    return ids[::-1].copy() if rng.random() < 0.5 else ids


def _batches(rng: np.random.Generator, m: int) -> np.ndarray:
    size = int(rng.integers(1, 20))
    draw = rng.random()
    if draw < 0.25:  # uneven, in order
        return np.sort(rng.integers(0, m // size + 1, m)).astype(np.int32)
    if draw < 0.35:  # not in order (a merged record of ranks with different batch sizes)
        return rng.integers(0, m // size + 1, m).astype(np.int32)
    return (np.arange(m) // size).astype(np.int32)


def _assert_same(got: F.OrderStats, want: dict) -> None:
    for name in FIELDS:
        a, b = getattr(got, name), want[name]
        if isinstance(b, float) and math.isnan(b):
            assert isinstance(a, float) and math.isnan(a), (name, a, b)
        else:
            assert a == b, (name, a, b)
    if want["order_map"] is None:
        assert got.order_map is None
    else:
        assert np.array_equal(got.order_map, want["order_map"])


@pytest.mark.parametrize("kind", ["permutation", "repeats", "partial", "sparse", "rotated", "blocks"])
def test_order_stats_equal_the_definitions_on_random_epochs(kind: str) -> None:
    rng = np.random.default_rng(sum(map(ord, kind)))
    for trial in range(150):
        n = int(rng.integers(0, 200))
        dtype = np.int64 if kind == "sparse" else (np.int32, np.int64)[trial % 2]
        prev, cur = _epoch(rng, kind, n).astype(dtype), _epoch(rng, kind, n).astype(dtype)
        if kind == "sparse" and trial % 2:
            cur = prev[rng.permutation(prev.size)]
        prev_batches, cur_batches = _batches(rng, prev.size), _batches(rng, cur.size)
        prev_next = cur_next = None
        if trial % 3 == 0:  # a subsampled record: the kept samples with their true successors
            prev_next = np.append(prev[1:], -1)
            cur_next = np.append(cur[1:], -1)
            keep_prev, keep_cur = rng.random(prev.size) < 0.6, rng.random(cur.size) < 0.6
            prev, prev_batches, prev_next = prev[keep_prev], prev_batches[keep_prev], prev_next[keep_prev]
            cur, cur_batches, cur_next = cur[keep_cur], cur_batches[keep_cur], cur_next[keep_cur]
        order_map = trial % 2 == 0
        got = F.order_stats(prev, prev_batches, cur, cur_batches, prev_next, cur_next, order_map=order_map)
        bins = F.order_map_bins(got.shared) if order_map else None
        _assert_same(got, _reference(prev, prev_batches, cur, cur_batches, prev_next, cur_next, bins))


def test_the_order_map_on_its_own_equals_the_one_order_stats_returns() -> None:
    rng = np.random.default_rng(5)
    prev, cur = rng.integers(0, 900, 700), rng.permutation(800)
    batches = np.arange(800) // 8
    stats = F.order_stats(prev, batches[:700], cur, batches, order_map=True)
    assert np.array_equal(images.order_map(prev, cur), stats.order_map)


def test_displacement_sums_are_exact_across_chunks() -> None:
    # At 10 million samples the sum of squares exceeds int64, so it is summed in chunks: cut small chunks here.
    rng = np.random.default_rng(6)
    ranks = rng.permutation(1000)
    whole = F._displacement(ranks, bins=8)
    cut = F._displacement(ranks, bins=8, chunk=7)
    d = [int(r) - i for i, r in enumerate(ranks)]
    assert whole.squares == cut.squares == sum(x * x for x in d)
    assert whole.absolute == cut.absolute == sum(abs(x) for x in d)
    assert whole.histogram is not None and cut.histogram is not None
    assert np.array_equal(whole.histogram, cut.histogram) and int(cut.histogram.sum()) == 1000
