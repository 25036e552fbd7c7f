"""Verdicts of the shuffle audit as pure functions: what the gathered records mean, decided identically wherever
they run (rank 0 decides each epoch and broadcasts; fit start is decided from gathered configs on every rank)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from epochkit.audit import functional as F
from epochkit.audit.findings import EpochVerdict, Finding


def _adder(verdict: EpochVerdict, epoch: int | None, skip: Collection[str]) -> Callable[..., None]:
    """``add(code, evidence, severity="issue")`` appends a finding to ``verdict`` unless ``code`` is skipped."""

    def add(code: str, evidence: str, severity: str = "issue") -> None:
        if code not in skip:
            verdict.findings.append(Finding(code, epoch, evidence, severity))

    return add


def judge_fit_start(configs: list[dict[str, Any]], world_size: int, skip: Collection[str] = ()) -> EpochVerdict:
    """The fit-start verdict from every rank's :func:`~epochkit.audit.recording.describe_loader` (rank order).

    Example:
        >>> config = {"sampler": "SequentialSampler", "shuffle": False, "seed": None, "length": 10}
        >>> [f.code for f in judge_fit_start([config], world_size=1).findings]
        ['shuffle_off']
        >>> two_ranks = [{**config, "seed": 0}, {**config, "seed": 1}]
        >>> judge_fit_start(two_ranks, 2, skip=["shuffle_off"]).findings[0].evidence
        'seed rank 0=0, rank 1=1'
    """
    verdict = EpochVerdict(None)
    first = configs[0]
    add = _adder(verdict, None, skip)
    if first.get("shuffle") is False:
        add("shuffle_off", f"train sampler is {first['sampler']} (shuffle=False)")
    if len(configs) > 1:
        differing = []
        for key in ("sampler", "seed", "length", "shuffle", "drop_last"):
            values = [c.get(key) for c in configs]
            if any(v != values[0] for v in values):
                differing.append(f"{key} " + ", ".join(f"rank {r}={v!r}" for r, v in enumerate(values)))
        if differing:
            add("rank_sampler_mismatch", "; ".join(differing))
    if first.get("iterable") and (first.get("num_workers", 0) > 1 or world_size > 1):
        add(
            "iterable_workers",
            f"{first['dataset']} with num_workers={first['num_workers']} on {world_size} rank(s); "
            "duplicates are measured every epoch",
            severity="notice",
        )
    if first.get("persistent_workers") and first.get("num_workers", 0) > 0 and first.get("dataset_set_epoch"):
        add(
            "persistent_workers_set_epoch",
            f"{first['dataset']}.set_epoch exists but num_workers={first['num_workers']} workers persist",
        )
    for key in ("sampler", "shuffle", "seed", "length", "drop_last", "num_workers"):
        value = first.get(key)
        if isinstance(value, bool | int | float) and value is not None:
            verdict.metrics[f"config_{key}"] = float(value)
    return verdict


def judge_epoch(
    epoch: int,
    payloads: list[dict[str, Any]],
    configs: list[dict[str, Any]],
    previous: dict[str, np.ndarray] | None = None,
    previous_epoch: int | None = None,
    skip: Collection[str] = (),
) -> tuple[EpochVerdict, dict[str, np.ndarray] | None]:
    """One epoch's verdict from every rank's payload (rank order), and the merged record to compare the next
    epoch with (None when nothing was recorded).

    A payload holds ``source``, ``seen``, ``distinct`` (exact, over the rank's full stream), ``label``
    (:class:`~epochkit.audit.functional.LabelStats` fields or None), ``fraction`` (share of ids kept) and the kept
    record: ``ids``, ``successors``, ``positions`` and ``batches``.

    Example:
        >>> ids = np.arange(100)
        >>> payload = {"source": "sampler indices", "seen": 100, "distinct": 100, "label": None, "fraction": 1.0,
        ...            "ids": ids, "successors": np.append(ids[1:], -1), "positions": ids, "batches": ids // 10}
        >>> config = {"universe": 100, "padding": 0}
        >>> first, record = judge_epoch(0, [payload], [config])
        >>> again, _ = judge_epoch(1, [payload], [config], record, 0)
        >>> [f.evidence for f in again.findings]  # doctest: +ELLIPSIS
        ['order identical to epoch 0: Spearman 1.000 (a fresh shuffle stays within ±0.603, 100 samples)']
    """
    verdict = EpochVerdict(epoch)
    metrics, notes = verdict.metrics, verdict.notes
    add = _adder(verdict, epoch, skip)
    configs = configs or [{} for _ in payloads]
    first = configs[0]
    world = len(payloads)
    iterable = bool(first.get("iterable"))
    fraction = min(p["fraction"] for p in payloads)
    if payloads[0]["source"] == "none":
        notes.append("no sample identities (no sampler indices, sample_ids or fingerprints): nothing audited")
        return verdict, None
    if fraction < 1.0:
        notes.append(f"auditing a {fraction:.2%} subsample of samples across ranks and epochs (max_samples)")

    # Coverage and duplicates: per rank exactly, over all ranks on the (sub)sampled record.
    universe = first.get("universe")
    padding = int(sum(c.get("padding", 0) for c in configs[:1]))
    if first.get("replacement"):
        notes.append("the sampler draws with replacement: duplicates and coverage are not checked")
    else:
        dup_code = "iterable_replicated" if iterable else "duplicate_samples"
        for rank, p in enumerate(payloads):
            dups = p["seen"] - p["distinct"]
            allowed = max(0, p["seen"] - universe) if universe is not None else 0
            if dups > allowed:
                where = f"rank {rank}: " if world > 1 else ""
                add(
                    dup_code,
                    f"{where}{dups} of {p['seen']} samples drawn were repeats ({dups / p['seen']:.1%}"
                    f"{', ' + str(first.get('num_workers')) + ' workers' if iterable else ''})",
                )
        seen = sum(p["seen"] for p in payloads)
        distinct_local = sum(p["distinct"] for p in payloads)
        metrics["duplicates"] = float(seen - distinct_local)
        cov_fraction = fraction
        if world > 1:
            shared, distinct = F.rank_overlap([p["ids"] for p in payloads])
        else:  # one rank: the exact count over the full stream, whatever the subsample
            shared, distinct, cov_fraction = 0, payloads[0]["distinct"], 1.0
        if universe is not None:
            expected = min(universe, seen)
            kept_expected = cov_fraction * expected
            metrics["coverage"] = min(1.0, distinct / kept_expected) if kept_expected else 1.0
            # Exact when nothing is subsampled (padding aside); otherwise the subset's count is binomial
            # around cov_fraction * expected.
            slack = F.Z * np.sqrt(expected * cov_fraction * (1 - cov_fraction)) + padding * cov_fraction
            if distinct < kept_expected - slack:
                never = ""
                if universe > expected and cov_fraction == 1.0:  # the epoch drew fewer samples than the data holds
                    never = f"; {universe - distinct} of the data set's {universe} were not drawn at all"
                add(
                    "incomplete_coverage",
                    f"coverage {metrics['coverage']:.3f}: about {round((kept_expected - distinct) / cov_fraction)}"
                    f" of {expected} samples never seen this epoch{never}",
                )
        if world > 1:
            metrics["rank_overlap"] = shared / distinct if distinct else 0.0
            allowed_shared = padding * fraction + (F.Z * np.sqrt(padding * fraction) if fraction < 1 else 0)
            if shared > allowed_shared:
                add(
                    "iterable_replicated" if iterable else "rank_overlap",
                    f"{shared} samples ({shared / distinct:.1%}) were seen by more than one of {world} ranks"
                    f" (DistributedSampler padding allows {padding})",
                )

    # Order against the previous epoch, on the merged stream (global position = local position * W + rank).
    record = merge_records(payloads)
    if previous is not None and previous_epoch is not None:
        prev_epoch = previous_epoch
        stats = F.order_stats(
            previous["ids"],
            previous["batches"],
            record["ids"],
            record["batches"],
            previous["successors"],
            record["successors"],
        )
        order_flag = False
        if stats.shared >= F.MIN_ORDER_SAMPLES:
            rho = stats.spearman
            metrics["spearman"] = rho
            threshold = F.spearman_threshold(stats.shared)
            if abs(rho) > threshold:
                order_flag = True
                what = (
                    f"order identical to epoch {prev_epoch}"
                    if rho > 0.9999
                    else f"positions correlate with epoch {prev_epoch}"
                )
                add(
                    "order_unchanged",
                    f"{what}: Spearman {rho:.3f} (a fresh shuffle stays within ±{threshold:.3f}, "
                    f"{stats.shared} samples)",
                )
        else:
            notes.append(f"only {stats.shared} samples shared with epoch {prev_epoch}: order not compared")
        if not np.isnan(stats.cobatch_ratio):
            metrics["cobatch_ratio"] = stats.cobatch_ratio
            threshold = F.cobatch_threshold(stats.cobatch_expected)
            # Too few batches: every pair meets again anyway and the ratio cannot exceed the threshold.
            if stats.cobatch_ratio > threshold and not order_flag:
                add(
                    "batches_unchanged",
                    f"co-batch ratio {stats.cobatch_ratio:.2f} vs epoch {prev_epoch} (a fresh shuffle gives "
                    f"1.00, flag above {threshold:.2f}) with Spearman {stats.spearman:.3f}",
                )
        if stats.successor_pairs:
            metrics["successors_preserved"] = stats.successor_fraction
            if stats.successors_preserved >= F.successor_threshold(stats.successor_pairs) and not order_flag:
                add(
                    "successors_preserved",
                    f"{stats.successor_fraction:.1%} of samples kept their successor from epoch {prev_epoch} "
                    f"({stats.successors_preserved} of {stats.successor_pairs}; a fresh shuffle keeps about 1)",
                )

    # Labels, pooled over ranks.
    label_stats = [p["label"] for p in payloads if p["label"] is not None]
    if label_stats:
        changes = sum(s["changes"] for s in label_stats)
        pairs = sum(s["pairs"] for s in label_stats)
        q = sum(s["expected_change_rate"] * s["pairs"] for s in label_stats) / max(pairs, 1)
        if pairs and q > 0:
            metrics["label_change_ratio"] = (changes / pairs) / q
            if F.change_rate_flagged(changes, pairs, q):
                add(
                    "sorted_labels",
                    f"label-change rate {changes / pairs:.3f} vs {q:.3f} expected for a shuffle (1 - sum p^2)",
                )
        with_batches = [s for s in label_stats if s["batches"] and not np.isnan(s["batch_entropy"])]
        nb = sum(s["batches"] for s in with_batches)
        if nb:
            h = sum(s["batch_entropy"] * s["batches"] for s in with_batches) / nb
            e = sum(s["expected_batch_entropy"] * s["batches"] for s in with_batches) / nb
            sd = max(s["entropy_sd"] for s in with_batches)
            # Each rank's mean is at or above its floor under a shuffle, so their batch-weighted mean is at or above
            # the weighted floor; a rank without a floor (many batches) contributes its expectation (no constraint).
            floors = [s.get("entropy_floor", float("nan")) for s in with_batches]
            floor = float("nan")
            if any(not np.isnan(f) for f in floors):
                floor = (
                    sum(
                        (s["expected_batch_entropy"] if np.isnan(f) else f) * s["batches"]
                        for s, f in zip(with_batches, floors, strict=True)
                    )
                    / nb
                )
            if e > 0:
                metrics["batch_entropy_ratio"] = h / e
                if F.entropy_flagged(h, e, sd, nb, floor=floor):
                    add(
                        "class_blocked_batches",
                        f"mean batch label entropy {h:.2f} bits vs {e:.2f} for a random batch",
                    )
    metrics["issues"] = float(len(verdict.issues))
    return verdict, record


def merge_records(payloads: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One record over all ranks, ordered by global position ``local position * W + rank``."""
    world = len(payloads)
    if world == 1:
        p = payloads[0]
        return {"ids": p["ids"], "batches": p["batches"], "successors": p["successors"]}
    ids = np.concatenate([p["ids"] for p in payloads])
    glob = np.concatenate([p["positions"] * world + r for r, p in enumerate(payloads)])
    order = np.argsort(glob, kind="stable") if world > 1 else np.arange(ids.size)
    return {
        "ids": ids[order],
        "batches": np.concatenate([p["batches"] for p in payloads])[order],
        "successors": np.concatenate([p["successors"] for p in payloads])[order],
    }


def epoch_payload(
    ids: np.ndarray,
    sizes: np.ndarray,
    *,
    source: str,
    universe: int | None,
    world_size: int = 1,
    max_samples: int | None = None,
    labels_by_id: np.ndarray | None = None,
    labels_by_position: np.ndarray | None = None,
) -> dict[str, Any]:
    """One rank's epoch, reduced to what :func:`judge_epoch` needs: exact coverage counts over the full stream,
    label statistics, and the record of a fixed subset of ids (all ids unless ``ids.size * world_size`` exceeds
    ``max_samples``) with each kept sample's position, batch and true successor.

    Args:
        ids: Sample ids in presentation order.
        sizes: Batch sizes, in order (they sum to ``ids.size``).
        source: Where the ids came from, for the report.
        universe: Samples in the data set (None when unknown).
        world_size: Ranks; the subset is sized for all of them together.
        max_samples: The bound on kept ids across ranks (None: keep all).
        labels_by_id: Labels indexed by id (dataset index), or None.
        labels_by_position: Labels aligned with ``ids``, or None.

    Example:
        >>> ids = np.array([4, 2, 0, 1, 3, 2])
        >>> p = epoch_payload(ids, np.array([2, 2, 2]), source="sampler indices", universe=5)
        >>> p["seen"], p["distinct"], p["batches"].tolist(), p["successors"].tolist()
        (6, 5, [0, 0, 1, 1, 2, 2], [2, 0, 1, 3, 2, -1])
    """
    ids, sizes = np.asarray(ids), np.asarray(sizes, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cov = F.coverage_stats(ids, universe)
    # Label runs: on every stride-th whole batch when the epoch is larger than max_samples (exact per batch).
    stride = 1
    if max_samples is not None and ids.size > max_samples:
        stride = -(-ids.size // max_samples)
    picked = np.arange(0, sizes.size, stride)
    picked_sizes = sizes[picked]
    positions = np.repeat(offsets[picked] - np.cumsum(np.concatenate([[0], picked_sizes[:-1]])), picked_sizes)
    positions += np.arange(positions.size)
    labels: np.ndarray | None = None
    if labels_by_position is not None and labels_by_position.size == ids.size:
        labels = labels_by_position[positions]
    elif labels_by_id is not None and ids.size and int(ids.min()) >= 0 and int(ids.max()) < labels_by_id.shape[0]:
        labels = labels_by_id[ids[positions]]
    label = None
    if labels is not None and labels.dtype.kind in "iub":  # float labels (regression targets): no runs
        picked_batches = np.repeat(picked.astype(np.int32), picked_sizes)
        label = F.label_stats(labels, picked_batches, within_batches=stride > 1)
    del labels, positions
    fraction = 1.0
    if max_samples is not None and ids.size * world_size > max_samples:
        fraction = max_samples / (ids.size * world_size)
        kept = np.flatnonzero(F.keep_mask(ids, fraction))
    else:
        kept = np.arange(ids.size)
    # Each kept sample keeps its true successor in the full stream, so successor counts stay exact.
    successors = np.full(kept.size, -1, np.int64)
    has_next = kept + 1 < ids.size
    successors[has_next] = ids[kept[has_next] + 1]
    return {
        "source": source,
        "seen": cov.seen,
        "distinct": cov.distinct,
        "label": None if label is None else label.__dict__,
        "fraction": fraction,
        "ids": ids[kept],
        "successors": successors,
        "positions": kept,
        "batches": (np.searchsorted(offsets, kept, side="right") - 1).astype(np.int32),
    }
