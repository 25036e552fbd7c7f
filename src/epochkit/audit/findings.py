"""Findings, verdicts and reports of the shuffle audit: what was found, the evidence, and the fix for its cause."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Every finding the audit can report: code -> (what it means, the usual fix). The fix a finding carries is the one
#: for its cause when the loader's configuration tells it (see :func:`remedy`).
CATALOG: dict[str, tuple[str, str]] = {
    "shuffle_off": (
        "the train sampler does not shuffle",
        "set shuffle=True in the train DataLoader (or DistributedSampler(shuffle=True))",
    ),
    "rank_sampler_mismatch": (
        "DDP ranks disagree on the train sampler",
        "build the sampler identically on every rank (same seed, e.g. DistributedSampler(dataset, seed=S)) "
        "or let Lightning add it (use_distributed_sampler=True)",
    ),
    "iterable_workers": (
        "an IterableDataset is read by several DataLoader workers or ranks",
        "shard inside __iter__ with torch.utils.data.get_worker_info() and the rank, or ignore this notice if it does",
    ),
    "persistent_workers_set_epoch": (
        "the dataset has set_epoch but persistent_workers keeps a stale copy in each worker",
        "set persistent_workers=False, or reseed through the sampler (sampler.set_epoch) instead of the dataset",
    ),
    "same_seed_reload": (
        "the reloaded train loader's sampler starts from the same seed as the one it replaced",
        "seed the generator from the epoch (torch.Generator().manual_seed(seed + self.trainer.current_epoch)), "
        "or build the loader once",
    ),
    "duplicate_samples": (
        "samples repeated within an epoch",
        "use a sampler without replacement (RandomSampler(replacement=False) / DistributedSampler)",
    ),
    "incomplete_coverage": (
        "samples missed in an epoch",
        "use one sampler over the whole data set, seeded identically on every rank (DistributedSampler(seed=S))",
    ),
    "rank_overlap": (
        "DDP ranks saw the same samples",
        "give every rank a disjoint shard: DistributedSampler with the same seed on all ranks, "
        "or use_distributed_sampler=True",
    ),
    "iterable_replicated": (
        "an IterableDataset is replicated across DataLoader workers or ranks",
        "shard inside __iter__ with torch.utils.data.get_worker_info() and the rank (split the stream)",
    ),
    "order_unchanged": (
        "the epoch order did not change",
        "call sampler.set_epoch(epoch) each epoch (or reseed the sampler's generator); set shuffle=True",
    ),
    "batches_unchanged": (
        "the same batches came back in a new order",
        "shuffle samples, not batches: reshuffle indices before batching each epoch",
    ),
    "successors_preserved": (
        "samples kept their neighbours from the previous epoch",
        "reshuffle the whole permutation each epoch instead of rotating or shifting it",
    ),
    "weak_mixing": (
        "samples stay near their previous place: the loader reshuffles, but only locally",
        "shuffle over a larger window (a larger shuffle buffer, more shards or smaller chunks)",
    ),
    "correlated_batches": (
        "batches re-meet more samples than a fresh shuffle would",
        "expected from length-grouped or bucketed batching and from chunk- or buffer-shuffled streams; a larger "
        "window (megabatch, bucket, buffer, chunk) mixes more",
    ),
    "sorted_labels": (
        "labels come in runs (data sorted by label)",
        "set shuffle=True, or shuffle the data once before splitting/streaming it",
    ),
    "class_blocked_batches": (
        "batches hold fewer classes than random batches",
        "shuffle samples across classes (no class-blocked or class-sorted sampler)",
    ),
    "resume_replayed": (
        "the resumed fit did not continue the epoch order the checkpoint was cut from",
        "make the loader's whole state part of the checkpoint (torchdata's StatefulDataLoader with a stateful "
        "sampler), or resume from an end-of-epoch checkpoint; epochkit.testing.resume_drill(...) checks a resume",
    ),
}

#: Findings reported as notices unless ``ShuffleAudit(escalate=...)`` names them: properties a loader can have by
#: design, measured and explained, that training survives.
NOTICES = ("iterable_workers", "weak_mixing", "correlated_batches")
#: Order findings: a fit-start or reload cause that explains a replay (``shuffle_off``, ``same_seed_reload``)
#: replaces them, so a cause is reported once, with the fix for that cause.
ORDER_CODES = ("order_unchanged", "batches_unchanged", "successors_preserved", "weak_mixing", "correlated_batches")
#: Label findings (the label map shows them).
LABEL_CODES = ("sorted_labels", "class_blocked_batches")
#: The display name of the train loader of a fit that has only one.
SINGLE_LOADER = "train_dataloader"

_SET_EPOCH = "epochkit.SetEpoch()"


def remedy(code: str, config: Mapping[str, Any] | None) -> str | None:
    """The fix for ``code`` when ``config`` (a :class:`~epochkit.audit.payload.LoaderConfig`) names its cause; None
    for the catalog's usual fix.

    Example:
        >>> hf = {"stream": "hf_datasets", "dataset": "IterableDataset", "dataset_set_epoch": True, "iterable": True}
        >>> print(remedy("order_unchanged", hf))  # doctest: +ELLIPSIS
        Lightning never calls set_epoch on an IterableDataset: add epochkit.SetEpoch() to the Trainer's callbacks, ...
        >>> bucket = {"batch_sampler": "BucketBatchSampler", "batch_sampler_set_epoch": True, "design": "custom"}
        >>> print(remedy("order_unchanged", bucket))  # doctest: +ELLIPSIS
        Lightning calls set_epoch on loader.sampler and loader.batch_sampler.sampler but never on the batch sampler...
        >>> remedy("order_unchanged", {"sampler": "SequentialSampler"}) is None
        True
    """
    if not config:
        return None
    stream = config.get("stream", "")
    dataset = config.get("dataset", "the data set")
    batch_sampler = config.get("batch_sampler", "")
    sampler = config.get("sampler", "")
    if code == "shuffle_off":
        if stream == "hf_datasets":
            return (
                f"call .shuffle(seed=..., buffer_size=...) on the {dataset} and add {_SET_EPOCH} to the Trainer's "
                "callbacks so that every epoch reshuffles"
            )
        if stream == "litdata":
            return "pass shuffle=True to the StreamingDataset (or to the StreamingDataLoader)"
        return None
    if code == "iterable_workers" and stream == "hf_datasets":
        return (
            "split the stream across ranks with datasets.distributed.split_dataset_by_node(ds, rank=trainer.global_rank"
            ", world_size=trainer.world_size); workers already get disjoint shards"
        )
    if code == "order_unchanged":
        if config.get("iterable"):
            if config.get("loader_sets_epoch"):
                return None
            if config.get("dataset_set_epoch"):
                if config.get("persistent_workers") and config.get("num_workers", 0) > 0 and stream != "hf_datasets":
                    return (
                        f"persistent workers keep the copy of the {dataset} made before any set_epoch: set "
                        f"persistent_workers=False (with {_SET_EPOCH} in the callbacks)"
                    )
                return (
                    f"Lightning never calls set_epoch on an IterableDataset: add {_SET_EPOCH} to the Trainer's "
                    f"callbacks, which calls {dataset}.set_epoch(epoch) before every epoch"
                )
            return (
                f"reshuffle the stream every epoch (a shard and buffer shuffle seeded from the epoch) and give "
                f"{dataset} a set_epoch(epoch) for {_SET_EPOCH} to call"
            )
        if batch_sampler:
            if config.get("batch_sampler_set_epoch"):
                return (
                    "Lightning calls set_epoch on loader.sampler and loader.batch_sampler.sampler but never on the "
                    f"batch sampler itself: add {_SET_EPOCH} to the Trainer's callbacks, which calls "
                    f"{batch_sampler}.set_epoch(epoch) every epoch"
                )
            if not config.get("sampler_set_epoch"):
                return (
                    f"give {batch_sampler} a set_epoch(epoch) that reseeds its order (and add {_SET_EPOCH}, since "
                    "Lightning never calls it on a batch sampler), or draw a fresh order in its __iter__"
                )
        if config.get("sampler_set_epoch") and sampler and config.get("design") != "sample":
            return (
                f"{sampler}.set_epoch(epoch) is called every epoch, but its order does not depend on the epoch: "
                "seed its permutation from (seed, epoch)"
            )
        if sampler and config.get("design") == "custom" and not config.get("sampler_set_epoch"):
            return (
                f"give {sampler} a set_epoch(epoch) that reseeds it (Lightning calls it every epoch), or draw a fresh "
                "permutation in its __iter__"
            )
        return None
    if code in ("weak_mixing", "correlated_batches", "batches_unchanged"):
        if stream == "hf_datasets":
            buffer, shards = config.get("buffer_size"), config.get("num_shards")
            if code == "weak_mixing":
                return (
                    f"raise the shuffle buffer (.shuffle(buffer_size=...), now {buffer}) or stream from more shards "
                    f"than the buffer interleaves at once (max_buffer_input_shards=10; now {shards}: "
                    "to_iterable_dataset(num_shards=...) or .reshard()), so that samples move farther"
                )
            return f"raise the shuffle buffer (.shuffle(buffer_size=...), now {buffer}) to many batches' worth"
        if stream == "litdata":
            chunk, window = config.get("chunk_size"), config.get("item_window")
            layout = f"chunks of about {chunk} samples ({config.get('chunks')} chunks), item_shuffle_window={window}"
            if code == "weak_mixing":
                return f"litdata moves samples only with their chunk ({layout}): more, smaller chunks mix more"
            return (
                f"litdata fills each batch from one chunk window ({layout}; 0: the whole chunk): windows of many "
                "batches (larger chunk_size, item_shuffle_window=0) mix batches more"
            )
        if stream == "iterable":
            return f"shuffle {dataset} over a larger window (a larger shuffle buffer, more shards) every epoch"
        if code == "batches_unchanged" and batch_sampler:
            return f"{batch_sampler} forms its batches once: form them from a fresh permutation every epoch"
        owner = batch_sampler or sampler
        if owner and code != "batches_unchanged":
            return (
                f"{owner} keeps samples together across epochs, as length-grouped or bucketed batching does by design"
                " (larger megabatches or buckets mix more); ignore=[...] this notice if that is intended"
            )
    return None


@dataclass(frozen=True)
class Finding:
    """One thing the audit found.

    Attributes:
        code: A key of :data:`CATALOG`.
        epoch: The epoch it was found in (None at fit start).
        evidence: The measured evidence, e.g. ``"order identical to epoch 3: Spearman 1.000"``.
        severity: ``"issue"`` (acted on by ``on_issue``) or ``"notice"`` (reported only).
        loader: The train loader it concerns, by its key in the ``CombinedLoader`` (None when the fit has one).
        remedy: The fix for this finding's cause, when the audit knows it (else the catalog's, see :attr:`fix`).

    Example:
        >>> f = Finding("order_unchanged", 4, "order identical to epoch 3: Spearman 1.000")
        >>> print(f.message())  # doctest: +ELLIPSIS
        ShuffleAudit epoch 4: order_unchanged (the epoch order did not change): order identical to epoch 3: ...
        >>> f.fix
        "call sampler.set_epoch(epoch) each epoch (or reseed the sampler's generator); set shuffle=True"
        >>> Finding("shuffle_off", None, "SequentialSampler", loader="labelled").message()[:42]
        "ShuffleAudit fit start, loader 'labelled':"
    """

    code: str
    epoch: int | None
    evidence: str
    severity: str = "issue"
    loader: str | None = None
    remedy: str | None = None

    @property
    def title(self) -> str:
        """What the finding means."""
        return CATALOG[self.code][0]

    @property
    def fix(self) -> str:
        """The fix for its cause (:attr:`remedy`), else the usual fix."""
        return self.remedy or CATALOG[self.code][1]

    def message(self) -> str:
        """One line naming the finding, the loader, the evidence and the fix."""
        where = "fit start" if self.epoch is None else f"epoch {self.epoch}"
        if self.loader is not None:
            where += f", loader {self.loader!r}"
        return f"ShuffleAudit {where}: {self.code} ({self.title}): {self.evidence}. Fix: {self.fix}."

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and checkpoints."""
        return {
            "code": self.code,
            "epoch": self.epoch,
            "evidence": self.evidence,
            "severity": self.severity,
            "loader": self.loader,
            "title": self.title,
            "fix": self.fix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        code = data["code"]
        fix = data.get("fix")
        return cls(
            code,
            data.get("epoch"),
            data["evidence"],
            data.get("severity", "issue"),
            data.get("loader"),
            fix if fix and fix != CATALOG.get(code, ("", ""))[1] else None,
        )


@dataclass
class EpochVerdict:
    """Everything the audit measured in one epoch and what it concluded.

    Attributes:
        epoch: The epoch.
        metrics: Scalars by name (``coverage``, ``spearman``, ...; ``<loader>/coverage`` with several loaders);
            absent when not measurable.
        findings: What was found.
        notes: Why a check was skipped, in words.
        digests: Per loader (:data:`SINGLE_LOADER` for a fit with one): ``{"merged": hex, "ranks": [hex, ...]}``, a
            64-bit digest of the order each rank presented and one over all ranks (see :mod:`.digests`).
        order_map: The order map of the judged loader, when asked for (rank 0 only: not part of :meth:`to_dict`).
    """

    epoch: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digests: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_map: Any = field(default=None, repr=False, compare=False)

    @property
    def issues(self) -> list[Finding]:
        """The findings of severity ``"issue"``."""
        return [f for f in self.findings if f.severity == "issue"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and checkpoints."""
        return {
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
            "digests": {k: dict(v) for k, v in self.digests.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochVerdict:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data.get("epoch"),
            dict(data.get("metrics", {})),
            [Finding.from_dict(f) for f in data.get("findings", [])],
            list(data.get("notes", [])),
            {k: dict(v) for k, v in data.get("digests", {}).items()},
        )


def markdown_report(verdict: EpochVerdict) -> str:
    """A short Markdown report of one verdict, for TensorBoard's text tab.

    Example:
        >>> v = EpochVerdict(2, {"coverage": 1.0}, [Finding("order_unchanged", 2, "Spearman 1.000")])
        >>> print(markdown_report(v))  # doctest: +ELLIPSIS
        **Shuffle audit, epoch 2: 1 issue**
        <BLANKLINE>
        - **order_unchanged**: the epoch order did not change. Spearman 1.000. *Fix:* call sampler.set_epoch(...
        <BLANKLINE>
        | metric | value |
        |---|---|
        | coverage | 1.0000 |
    """
    where = "fit start" if verdict.epoch is None else f"epoch {verdict.epoch}"
    n = len(verdict.issues)
    head = f"**Shuffle audit, {where}: {n} issue{'s' if n != 1 else ''}**" if n else f"**Shuffle audit, {where}: ok**"
    lines = [head, ""]
    for f in verdict.findings:
        tag = "" if f.severity == "issue" else " (notice)"
        loader = f" in `{f.loader}`" if f.loader is not None else ""
        lines.append(f"- **{f.code}**{tag}{loader}: {f.title}. {f.evidence}. *Fix:* {f.fix}.")
    lines.extend(f"- note: {note}" for note in verdict.notes)
    if verdict.findings or verdict.notes:
        lines.append("")
    if verdict.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in verdict.metrics.items()]
    if verdict.digests:
        lines += ["", "| order digest | merged | per rank |", "|---|---|---|"]
        lines += [
            f"| {name} | `{d.get('merged', '')}` | {' '.join(f'`{r}`' for r in d.get('ranks', []))} |"
            for name, d in verdict.digests.items()
        ]
    return "\n".join(lines).rstrip()


def summary(fit_start: EpochVerdict | None, verdicts: list[EpochVerdict]) -> str:
    """One paragraph over a whole fit: the epochs audited, the issues by code (and loader) with the epochs they
    occurred in, and the notices.

    Example:
        >>> vs = [EpochVerdict(0), EpochVerdict(1, findings=[Finding("order_unchanged", 1, "Spearman 1.000")])]
        >>> summary(EpochVerdict(None), vs)
        'ShuffleAudit: 2 epochs audited, 1 issue: order_unchanged (epochs 1).'
        >>> summary(None, [EpochVerdict(0)])
        'ShuffleAudit: 1 epoch audited, no issue: every epoch was a fresh, complete shuffle.'
        >>> start = EpochVerdict(None, findings=[Finding("shuffle_off", None, "SequentialSampler", loader="b")])
        >>> summary(start, [EpochVerdict(0)])
        "ShuffleAudit: 1 epoch audited, 1 issue: shuffle_off in 'b' (fit start)."
    """
    issues: dict[str, list[str]] = {}
    notices: dict[str, list[str]] = {}
    count = 0
    for v in ([fit_start] if fit_start is not None else []) + list(verdicts):
        for f in v.findings:
            key = f.code if f.loader is None else f"{f.code} in {f.loader!r}"
            when = "fit start" if f.epoch is None else str(f.epoch)
            target = issues if f.severity == "issue" else notices
            if when not in target.setdefault(key, []):
                target[key].append(when)
            count += f.severity == "issue"
    n = len(verdicts)
    audited = f"{n} epoch{'s' if n != 1 else ''} audited"

    def listing(found: dict[str, list[str]]) -> str:
        parts = []
        for key, whens in found.items():
            epochs = [w for w in whens if w != "fit start"]
            label = ", ".join(
                (["fit start"] if "fit start" in whens else []) + ([f"epochs {', '.join(epochs)}"] if epochs else [])
            )
            parts.append(f"{key} ({label})")
        return "; ".join(parts)

    noted = f"; notices: {listing(notices)}" if notices else ""
    if not count:
        if notices:
            return f"ShuffleAudit: {audited}, no issue{noted}."
        return f"ShuffleAudit: {audited}, no issue: every epoch was a fresh, complete shuffle."
    return f"ShuffleAudit: {audited}, {count} issue{'s' if count != 1 else ''}: {listing(issues)}{noted}."
