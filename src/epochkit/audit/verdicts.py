"""Verdicts of the shuffle audit as pure functions: what the gathered records mean, decided identically wherever
they run (rank 0 decides each epoch and broadcasts; fit start is decided from gathered configs on every rank).

One function per check, each returning a partial :class:`~epochkit.audit.findings.EpochVerdict`:
:func:`judge_fit_start` (and :func:`judge_reload`) on the loader's configuration, :func:`judge_coverage`,
:func:`judge_order` and :func:`judge_labels` on an epoch; :func:`judge_epoch` combines the last three. The order
check depends on the loader's ``design`` (see :class:`~epochkit.audit.payload.LoaderConfig`):

* ``"sample"`` (a torch sampler that shuffles samples): any deviation from a fresh uniform permutation beyond the
  thresholds of :mod:`.functional` is an issue, as it cannot happen by design;
* ``"block"`` (a stream) and ``"custom"`` (a custom sampler or batch sampler): a *replay* is an issue (the order,
  its rotation or reversal, or the batches came back), and the same uniform thresholds become the notices
  ``weak_mixing`` and ``correlated_batches``, which report how weakly the loader mixes and name the knob.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from epochkit.audit import functional as F
from epochkit.audit.digests import merged_digest, order_digest
from epochkit.audit.findings import SINGLE_LOADER, EpochVerdict, Finding, remedy
from epochkit.audit.payload import EpochPayload, LoaderConfig, Record

#: Columns of the label table a payload carries for the label map (batches are binned into at most this many).
LABEL_COLUMNS = 128


class _Findings:
    """Appends findings to a verdict: skipped codes are dropped, escalated notices become issues, and each finding
    carries its loader and the fix for its cause (from the loader's configuration)."""

    def __init__(
        self,
        verdict: EpochVerdict,
        config: LoaderConfig | None,
        loader: str | None,
        skip: Collection[str],
        escalate: Collection[str],
    ) -> None:
        self.verdict, self.config, self.loader = verdict, config, loader
        self.skip, self.escalate = skip, escalate

    def add(self, code: str, evidence: str, severity: str = "issue") -> None:
        if code in self.skip:
            return
        if severity == "notice" and code in self.escalate:
            severity = "issue"
        fix = remedy(code, self.config)
        self.verdict.findings.append(Finding(code, self.verdict.epoch, evidence, severity, self.loader, fix))


def judge_fit_start(
    configs: Sequence[LoaderConfig],
    world_size: int,
    skip: Collection[str] = (),
    escalate: Collection[str] = (),
    loader: str | None = None,
    epoch: int | None = None,
) -> EpochVerdict:
    """The fit-start verdict of one loader from every rank's :func:`~epochkit.audit.recording.describe_loader`
    (rank order); ``epoch`` is set when a reloaded loader is judged.

    Example:
        >>> config = {"sampler": "SequentialSampler", "shuffle": False, "seed": None, "length": 10}
        >>> [f.code for f in judge_fit_start([config], world_size=1).findings]
        ['shuffle_off']
        >>> two_ranks = [{**config, "seed": 0}, {**config, "seed": 1}]
        >>> judge_fit_start(two_ranks, 2, skip=["shuffle_off"]).findings[0].evidence
        'seed rank 0=0, rank 1=1'
    """
    verdict = EpochVerdict(epoch)
    first = configs[0]
    found = _Findings(verdict, first, loader, skip, escalate)
    stream = first.get("stream", "")
    if first.get("shuffle") is False:
        if stream == "hf_datasets":
            what = f"the {first.get('dataset')} stream is never shuffled (no .shuffle(seed, buffer_size))"
        elif stream == "litdata":
            what = f"{first.get('dataset')}(shuffle=False)"
        else:
            what = f"train sampler is {first.get('sampler')} (shuffle=False)"
        found.add("shuffle_off", what)
    if len(configs) > 1:
        differing = []
        for key in ("sampler", "seed", "length", "shuffle", "drop_last"):
            values = [c.get(key) for c in configs]
            if any(v != values[0] for v in values):
                differing.append(f"{key} " + ", ".join(f"rank {r}={v!r}" for r, v in enumerate(values)))
        if differing:
            found.add("rank_sampler_mismatch", "; ".join(differing))
    workers = int(first.get("num_workers", 0) or 0)
    if first.get("iterable") and stream != "litdata":  # litdata splits chunks across ranks and workers itself
        # Hugging Face streams give workers disjoint shards, but ranks only after split_dataset_by_node.
        if stream == "hf_datasets":
            several = world_size > 1 and not first.get("split_by_node")
        else:
            several = workers > 1 or world_size > 1
        if several:
            found.add(
                "iterable_workers",
                f"{first.get('dataset')} with num_workers={workers} on {world_size} rank(s); "
                "duplicates are measured every epoch",
                severity="notice",
            )
    # Hugging Face streams keep their epoch in shared memory and litdata's workers count epochs themselves.
    if (
        first.get("persistent_workers")
        and workers > 0
        and first.get("dataset_set_epoch")
        and stream not in ("hf_datasets", "litdata")
    ):
        found.add(
            "persistent_workers_set_epoch",
            f"{first.get('dataset')}.set_epoch exists but num_workers={workers} workers persist",
        )
    for key in ("sampler", "shuffle", "seed", "length", "drop_last", "num_workers"):
        value = first.get(key)
        if isinstance(value, bool | int | float) and value is not None:
            verdict.metrics[f"config_{key}"] = float(value)
    return verdict


def judge_reload(
    epoch: int,
    configs: Sequence[LoaderConfig],
    previous: Sequence[LoaderConfig],
    world_size: int,
    skip: Collection[str] = (),
    escalate: Collection[str] = (),
    loader: str | None = None,
) -> EpochVerdict:
    """The verdict on a loader that ``reload_dataloaders_every_n_epochs`` swapped in at ``epoch``: the fit-start
    checks on its configuration, and ``same_seed_reload`` when its sampler's own generator starts from the seed of
    the loader it replaced (every reload then replays one order).

    Example:
        >>> old = {"sampler": "RandomSampler", "shuffle": True, "seed": 0, "sampler_set_epoch": False}
        >>> [f.code for f in judge_reload(1, [old], [old], world_size=1).findings]
        ['same_seed_reload']
        >>> judge_reload(1, [{**old, "seed": None}], [old], world_size=1).findings
        []
    """
    verdict = judge_fit_start(configs, world_size, skip, escalate, loader, epoch=epoch)
    verdict.metrics.clear()
    new, old = configs[0], previous[0] if previous else {}
    seed = new.get("seed")
    if (
        seed is not None
        and new.get("shuffle")
        and not new.get("sampler_set_epoch")
        and new.get("sampler") == old.get("sampler")
        and seed == old.get("seed")
    ):
        _Findings(verdict, new, loader, skip, escalate).add(
            "same_seed_reload",
            f"the reloaded loader's {new.get('sampler')} draws from a generator seeded {seed}, like the loader it "
            "replaced: every reload repeats one order",
        )
    return verdict


def judge_coverage(
    epoch: int,
    payloads: Sequence[EpochPayload],
    configs: Sequence[LoaderConfig],
    skip: Collection[str] = (),
    escalate: Collection[str] = (),
    loader: str | None = None,
) -> EpochVerdict:
    """Coverage, duplicates and rank overlap: per rank exactly, over all ranks on the (sub)sampled record.

    Example:
        >>> p = epoch_payload(np.array([0, 1, 1, 2]), np.array([2, 2]), source="sampler indices", dataset_size=5)
        >>> v = judge_coverage(0, [p], [{"dataset_size": 5}])
        >>> sorted(f.code for f in v.findings), v.metrics["coverage"]
        (['duplicate_samples', 'incomplete_coverage'], 0.75)
    """
    first = configs[0] if configs else LoaderConfig()
    verdict = EpochVerdict(epoch)
    found = _Findings(verdict, first, loader, skip, escalate)
    metrics, notes = verdict.metrics, verdict.notes
    iterable = bool(first.get("iterable"))
    world = len(payloads)
    fraction = min(p.fraction for p in payloads)
    dataset_size = first.get("dataset_size")
    padding = int(first.get("padding", 0) or 0)
    if first.get("replacement"):
        notes.append("the sampler draws with replacement: duplicates and coverage are not checked")
        return verdict
    dup_code = "iterable_replicated" if iterable else "duplicate_samples"
    for rank, p in enumerate(payloads):
        dups = p.presented - p.distinct
        allowed = max(0, p.presented - dataset_size) if dataset_size is not None else 0
        if dups > allowed:
            where = f"rank {rank}: " if world > 1 else ""
            workers = f", {first.get('num_workers')} workers" if iterable else ""
            share = f"{dups / p.presented:.1%}"
            found.add(dup_code, f"{where}{dups} of {p.presented} samples drawn were repeats ({share}{workers})")
    presented = sum(p.presented for p in payloads)
    metrics["duplicates"] = float(presented - sum(p.distinct for p in payloads))
    cov_fraction = fraction
    if world > 1:
        shared, distinct = F.rank_overlap([p.ids for p in payloads])
    else:  # one rank: the exact count over the full stream, whatever the subsample
        shared, distinct, cov_fraction = 0, payloads[0].distinct, 1.0
    if dataset_size is not None:
        expected = min(dataset_size, presented)
        kept_expected = cov_fraction * expected
        metrics["coverage"] = min(1.0, distinct / kept_expected) if kept_expected else 1.0
        if distinct < kept_expected - F.coverage_slack(expected, cov_fraction, padding):
            never = ""
            if dataset_size > expected and cov_fraction == 1.0:  # the epoch drew fewer samples than the data holds
                never = f"; {dataset_size - distinct} of the data set's {dataset_size} were not drawn at all"
            found.add(
                "incomplete_coverage",
                f"coverage {metrics['coverage']:.3f}: about {round((kept_expected - distinct) / cov_fraction)}"
                f" of {expected} samples never seen this epoch{never}",
            )
    if world > 1:
        metrics["rank_overlap"] = shared / distinct if distinct else 0.0
        if shared > F.overlap_allowance(padding, fraction):
            found.add(
                "iterable_replicated" if iterable else "rank_overlap",
                f"{shared} samples ({shared / distinct:.1%}) were seen by more than one of {world} ranks"
                f" (DistributedSampler padding allows {padding})",
            )
    return verdict


def judge_order(
    epoch: int,
    previous: Record,
    previous_epoch: int,
    record: Record,
    config: LoaderConfig | None = None,
    skip: Collection[str] = (),
    escalate: Collection[str] = (),
    loader: str | None = None,
    explained_by: str | None = None,
    order_map: bool = False,
) -> tuple[EpochVerdict, F.OrderStats]:
    """The epoch's order against the previous epoch's, on the merged records; the loader's ``design`` (default
    ``"sample"``) decides what is an issue and what a notice (see the module docstring). ``explained_by`` names a
    fit-start or reload finding that already explains a replay (``shuffle_off``, ``same_seed_reload``): order
    findings then become notes, so a cause is reported once. ``order_map=True`` puts the order map on the verdict.
    Returns the verdict and the statistics.

    Example:
        >>> ids = np.arange(200)
        >>> same = Record(ids, ids // 10, np.append(ids[1:], -1))
        >>> stream = {"design": "block", "stream": "iterable", "dataset": "Stream", "iterable": True}
        >>> v, stats = judge_order(1, same, 0, same, stream)
        >>> [(f.code, f.severity) for f in v.findings], stats.successors_preserved
        ([('order_unchanged', 'issue')], 199)
        >>> print(v.findings[0].fix)  # doctest: +ELLIPSIS
        reshuffle the stream every epoch (a shard and buffer shuffle seeded from the epoch) and give Stream a ...
    """
    config = config if config is not None else LoaderConfig()
    design = str(config.get("design", "sample"))
    verdict = EpochVerdict(epoch)
    found = _Findings(verdict, config, loader, skip, escalate)
    metrics, notes = verdict.metrics, verdict.notes
    stats = F.order_stats(
        previous.ids, previous.batches, record.ids, record.batches, previous.successors, record.successors, order_map
    )
    verdict.order_map = stats.order_map
    prev = previous_epoch
    n = stats.shared
    if n < F.MIN_ORDER_SAMPLES:
        notes.append(f"only {n} samples shared with epoch {prev}: order not compared")
    else:
        metrics["spearman"] = stats.spearman
        metrics["displacement"] = stats.displacement
    if not np.isnan(stats.cobatch_ratio):
        metrics["cobatch_ratio"] = stats.cobatch_ratio
        metrics["cobatch_share"] = stats.cobatch_share
    if stats.successor_pairs:
        metrics["successors_preserved"] = stats.successor_fraction
    if n < 2:
        return verdict, stats

    pending: list[tuple[str, str, str]] = []  # (code, evidence, severity)
    rho = f"Spearman {stats.spearman:.3f}" if n >= F.MIN_ORDER_SAMPLES else f"{n} samples"
    kept = (
        f"{stats.successor_fraction:.1%} of samples kept their successor ({stats.successors_preserved} of "
        f"{stats.successor_pairs}; a reshuffle keeps about 1)"
    )
    met = (
        f"{stats.cobatch_share:.1%} of same-batch pairs were together in epoch {prev} too (co-batch ratio "
        f"{stats.cobatch_ratio:.2f}; a fresh shuffle gives 1.00)"
    )
    identical = ""
    if stats.identical_batches:
        identical = f"; {stats.identical_batches} of {stats.full_batches[0]} batches identical as sets"
    replay = F.order_replayed(stats)
    if replay in ("identical", "reversed"):
        if replay == "reversed":
            what = (
                f"order reversed from epoch {prev}: {stats.successors_reversed} samples now followed by their "
                "predecessor"
            )
        elif stats.successors_preserved == stats.successor_pairs and stats.spearman > 0.9999:
            what = f"order identical to epoch {prev}: {rho}"
        else:
            what = f"order nearly identical to epoch {prev}: {kept}, {rho}"
        pending.append(("order_unchanged", _with_bound(what, stats, design), "issue"))
    elif F.batches_replayed(stats):
        pending.append(("batches_unchanged", f"{met}{identical}, {rho}", "issue"))
    elif replay == "shifted":
        pending.append(
            ("successors_preserved", f"{kept} from epoch {prev}, {rho}: the order was rotated or shifted", "issue")
        )
    elif design == "sample":
        threshold = F.spearman_threshold(n)
        if n >= F.MIN_ORDER_SAMPLES and abs(stats.spearman) > threshold:
            what = (
                f"order identical to epoch {prev}: Spearman {stats.spearman:.3f}"
                if stats.spearman > 0.9999
                else f"positions correlate with epoch {prev}: Spearman {stats.spearman:.3f}"
            )
            pending.append(
                ("order_unchanged", f"{what} (a fresh shuffle stays within ±{threshold:.3f}, {n} samples)", "issue")
            )
        elif F.cobatch_flagged(stats):
            pending.append(("batches_unchanged", f"{met}{identical}, {rho}", "issue"))
        elif stats.successors_preserved >= F.successor_threshold(stats.successor_pairs):
            pending.append(("successors_preserved", f"{kept} from epoch {prev}", "issue"))
    else:
        weak = []
        if F.displacement_flagged(stats.footrule, n):
            weak.append(
                f"samples moved {stats.displacement:.1%} as far as in a fresh shuffle (mean displacement "
                f"{stats.footrule / n:.0f} of {n} positions, {rho})"
            )
        if stats.successors_preserved >= F.successor_threshold(stats.successor_pairs):
            weak.append(kept)
        batches = F.cobatch_flagged(stats)
        if weak:
            pending.append(("weak_mixing", "; ".join(weak + ([met] if batches else [])), "notice"))
        elif batches:
            pending.append(("correlated_batches", f"{met}{identical}", "notice"))
    for code, evidence, severity in pending:
        if explained_by is not None:
            notes.append(f"{code}: {evidence} (explained by {explained_by})")
        else:
            found.add(code, evidence, severity)
    return verdict, stats


def _with_bound(what: str, stats: F.OrderStats, design: str) -> str:
    """The order evidence with the bound a fresh shuffle stays within, where that null applies."""
    if design == "sample" and stats.shared >= F.MIN_ORDER_SAMPLES:
        return (
            f"{what} (a fresh shuffle stays within ±{F.spearman_threshold(stats.shared):.3f}, {stats.shared} samples)"
        )
    return f"{what} ({stats.shared} samples)"


def judge_labels(
    epoch: int,
    payloads: Sequence[EpochPayload],
    config: LoaderConfig | None = None,
    skip: Collection[str] = (),
    escalate: Collection[str] = (),
    loader: str | None = None,
) -> EpochVerdict:
    """Label runs and class-blocked batches, pooled over ranks.

    Example:
        >>> labels = np.repeat(np.arange(4), 16)  # sorted by label
        >>> p = epoch_payload(
        ...     np.arange(64), np.full(8, 8), source="sampler indices", dataset_size=64, labels_by_id=labels
        ... )
        >>> sorted(f.code for f in judge_labels(0, [p]).findings)
        ['class_blocked_batches', 'sorted_labels']
    """
    verdict = EpochVerdict(epoch)
    found = _Findings(verdict, config, loader, skip, escalate)
    stats = [p.label for p in payloads if p.label is not None]
    if not stats:
        return verdict
    metrics = verdict.metrics
    s = F.pooled_label_stats(stats)
    q = s.expected_change_rate
    if s.pairs and q > 0:
        metrics["label_change_ratio"] = s.change_rate / q
        if F.change_rate_flagged(s.changes, s.pairs, q):
            found.add(
                "sorted_labels",
                f"label-change rate {s.change_rate:.3f} vs {q:.3f} expected for a shuffle (1 - sum p^2)",
            )
    e = s.expected_batch_entropy
    if s.batches and e > 0:
        metrics["batch_entropy_ratio"] = s.batch_entropy / e
        if F.entropy_flagged(s.batch_entropy, e, s.entropy_sd, s.batches, floor=s.entropy_floor):
            found.add(
                "class_blocked_batches",
                f"mean batch label entropy {s.batch_entropy:.2f} bits vs {e:.2f} for a random batch",
            )
    return verdict


def judge_epoch(
    epoch: int,
    payloads: Sequence[EpochPayload],
    configs: Sequence[LoaderConfig],
    previous: Record | None = None,
    previous_epoch: int | None = None,
    skip: Collection[str] = (),
    escalate: Collection[str] = (),
    loader: str | None = None,
    explained_by: str | None = None,
    order_map: bool = False,
) -> tuple[EpochVerdict, Record | None]:
    """One loader's epoch verdict from every rank's payload (rank order), and the merged record to compare the next
    epoch with (None when nothing was recorded). Metrics are unprefixed; digests are keyed by ``loader`` (or
    :data:`~epochkit.audit.findings.SINGLE_LOADER`); ``order_map=True`` puts the order map on the verdict.

    Example:
        >>> ids = np.arange(100)
        >>> payload = epoch_payload(ids, np.full(10, 10), source="sampler indices", dataset_size=100)
        >>> config = {"dataset_size": 100, "padding": 0}
        >>> first, record = judge_epoch(0, [payload], [config])
        >>> again, _ = judge_epoch(1, [payload], [config], record, 0)
        >>> [f.evidence for f in again.findings]
        ['order identical to epoch 0: Spearman 1.000 (a fresh shuffle stays within ±0.603, 100 samples)']
    """
    verdict = EpochVerdict(epoch)
    verdict.digests[loader if loader is not None else SINGLE_LOADER] = {
        "merged": merged_digest([p.digest for p in payloads]),
        "ranks": [p.digest for p in payloads],
    }
    first = configs[0] if configs else LoaderConfig()
    if payloads[0].source == "none":
        verdict.notes.append("no sample identities (no sampler indices, sample_ids or fingerprints): nothing audited")
        return verdict, None
    fraction = min(p.fraction for p in payloads)
    if fraction < 1.0:
        verdict.notes.append(f"auditing a {fraction:.2%} subsample of samples across ranks and epochs (max_samples)")
    parts = [judge_coverage(epoch, payloads, configs, skip, escalate, loader)]
    record = merge_records(payloads)
    if previous is not None and previous_epoch is not None:
        order, _ = judge_order(
            epoch, previous, previous_epoch, record, first, skip, escalate, loader, explained_by, order_map
        )
        parts.append(order)
        verdict.order_map = order.order_map
    parts.append(judge_labels(epoch, payloads, first, skip, escalate, loader))
    for part in parts:
        verdict.metrics.update(part.metrics)
        verdict.findings.extend(part.findings)
        verdict.notes.extend(part.notes)
    verdict.metrics["issues"] = float(len(verdict.issues))
    return verdict, record


def merge_records(payloads: Sequence[EpochPayload]) -> Record:
    """One record over all ranks, ordered by global position ``local position * W + rank``; the batch of a sample
    is its rank's batch index (the effective batch: batch k of every rank)."""
    world = len(payloads)
    if world == 1:
        p = payloads[0]
        return Record(p.ids, p.batches, p.successors)
    ids = np.concatenate([p.ids for p in payloads])
    glob = np.concatenate([p.positions.astype(np.int64) * world + r for r, p in enumerate(payloads)])
    order = np.argsort(glob, kind="stable")
    return Record(
        ids[order],
        np.concatenate([p.batches for p in payloads])[order],
        np.concatenate([p.successors for p in payloads])[order],
    )


def epoch_payload(
    ids: np.ndarray,
    sizes: np.ndarray,
    *,
    source: str,
    dataset_size: int | None,
    world_size: int = 1,
    max_samples: int | None = None,
    labels_by_id: np.ndarray | None = None,
    labels_by_position: np.ndarray | None = None,
) -> EpochPayload:
    """One rank's epoch, reduced to what :func:`judge_epoch` needs: exact coverage counts and the order digest over
    the full stream, label statistics and the label table, and the record of a fixed subset of ids (all ids unless
    ``ids.size * world_size`` exceeds ``max_samples``) with each kept sample's position, batch and true successor.

    Args:
        ids: Sample ids in presentation order.
        sizes: Batch sizes, in order (they sum to ``ids.size``).
        source: Where the ids came from, for the report.
        dataset_size: Samples in the data set (None when unknown).
        world_size: Ranks; the subset is sized for all of them together.
        max_samples: The bound on kept ids across ranks (None: keep all).
        labels_by_id: Labels indexed by id (dataset index), or None.
        labels_by_position: Labels aligned with ``ids``, or None.

    Example:
        >>> ids = np.array([4, 2, 0, 1, 3, 2])
        >>> p = epoch_payload(ids, np.array([2, 2, 2]), source="sampler indices", dataset_size=5)
        >>> p.presented, p.distinct, p.batches.tolist(), p.successors.tolist(), len(p.digest)
        (6, 5, [0, 0, 1, 1, 2, 2], [2, 0, 1, 3, 2, -1], 16)
    """
    ids, sizes = np.asarray(ids), np.asarray(sizes, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cov = F.coverage_stats(ids, dataset_size)
    # Label runs: on every stride-th whole batch when the epoch is larger than max_samples (exact per batch).
    stride = 1
    if max_samples is not None and ids.size > max_samples:
        stride = -(-ids.size // max_samples)
    picked = np.arange(0, sizes.size, stride)
    picked_sizes = sizes[picked]
    positions: np.ndarray | slice = slice(None)  # every position: no index array
    if stride > 1:
        positions = np.repeat(offsets[picked] - np.cumsum(np.concatenate([[0], picked_sizes[:-1]])), picked_sizes)
        positions += np.arange(positions.size)
    labels: np.ndarray | None = None
    if labels_by_position is not None and labels_by_position.size == ids.size:
        labels = labels_by_position[positions]
    elif labels_by_id is not None and ids.size and int(ids.min()) >= 0 and int(ids.max()) < labels_by_id.shape[0]:
        labels = F.take(labels_by_id, ids[positions])
    label = None
    table = None
    if labels is not None and labels.dtype.kind in "iub":  # float labels (regression targets): no runs
        picked_batches = np.repeat(picked.astype(np.int32), picked_sizes)
        label = F.label_stats(labels, picked_batches, within_batches=stride > 1)
        table = _label_table(labels, picked_batches, sizes.size)
    del labels, positions
    fraction = 1.0
    index = np.int32 if ids.size < 2**31 else np.int64
    next_id = ids.dtype if ids.dtype.kind == "i" else np.dtype(np.int64)  # holds the ids and -1 (no successor)
    if max_samples is not None and ids.size * world_size > max_samples:
        fraction = max_samples / (ids.size * world_size)
        kept = np.flatnonzero(F.keep_mask(ids, fraction)).astype(index)
        # Each kept sample keeps its true successor in the full stream, so successor counts stay exact.
        successors = np.full(kept.size, -1, next_id)
        has_next = kept + 1 < ids.size
        successors[has_next] = ids[kept[has_next] + 1]
        kept_ids = ids[kept]
        batches = (np.searchsorted(offsets, kept, side="right") - 1).astype(np.int32)
    else:  # every sample: the stream itself, its next ids and its batches, without index arrays
        kept = np.arange(ids.size, dtype=index)
        successors = np.empty(ids.size, next_id)
        successors[:-1] = ids[1:]
        successors[-1:] = -1
        kept_ids = ids
        batches = np.repeat(np.arange(sizes.size, dtype=np.int32), sizes)
    return EpochPayload(
        source=source,
        presented=cov.presented,
        distinct=cov.distinct,
        label=label,
        fraction=fraction,
        ids=kept_ids,
        successors=successors,
        positions=kept,
        batches=batches,
        digest=order_digest(ids, sizes),
        label_table=table,
    )


def _label_table(labels: np.ndarray, batches: np.ndarray, n_batches: int) -> np.ndarray | None:
    """Class counts per column of batches (``batch * LABEL_COLUMNS // n_batches``), ``columns x classes`` (int32);
    None for labels that are not small class indices."""
    if not labels.size or int(labels.min()) < 0 or int(labels.max()) >= 1 << 15:
        return None
    classes = int(labels.max()) + 1
    columns = min(LABEL_COLUMNS, max(1, n_batches))
    # The column of each batch (a small table), read per sample: no product or division over the epoch.
    column_key = np.arange(max(1, n_batches), dtype=np.int64) * columns // max(1, n_batches) * classes
    counts = F.bincount(labels.size, lambda piece: column_key[batches[piece]] + labels[piece], columns * classes)
    return counts.reshape(columns, classes).astype(np.int32)


__all__ = [
    "LABEL_COLUMNS",
    "epoch_payload",
    "judge_coverage",
    "judge_epoch",
    "judge_fit_start",
    "judge_labels",
    "judge_order",
    "judge_reload",
    "merge_records",
]
