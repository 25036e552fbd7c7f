"""Findings, verdicts and reports of the shuffle audit: what was found, the evidence, and the usual fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Every finding the audit can report: code -> (what it means, the usual fix).
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
    "sorted_labels": (
        "labels come in runs (data sorted by label)",
        "set shuffle=True, or shuffle the data once before splitting/streaming it",
    ),
    "class_blocked_batches": (
        "batches hold fewer classes than random batches",
        "shuffle samples across classes (no class-blocked or class-sorted sampler)",
    ),
}

#: Findings decided once, when fit starts.
FIT_START = ("shuffle_off", "rank_sampler_mismatch", "iterable_workers", "persistent_workers_set_epoch")


@dataclass(frozen=True)
class Finding:
    """One thing the audit found.

    Attributes:
        code: A key of :data:`CATALOG`.
        epoch: The epoch it was found in (None at fit start).
        evidence: The measured evidence, e.g. ``"order identical to epoch 3: Spearman 1.000"``.
        severity: ``"issue"`` (acted on by ``on_issue``) or ``"notice"`` (reported only).

    Example:
        >>> f = Finding("order_unchanged", 4, "order identical to epoch 3: Spearman 1.000")
        >>> print(f.message())  # doctest: +ELLIPSIS
        ShuffleAudit epoch 4: order_unchanged (the epoch order did not change): order identical to epoch 3: ...
        >>> f.fix
        "call sampler.set_epoch(epoch) each epoch (or reseed the sampler's generator); set shuffle=True"
    """

    code: str
    epoch: int | None
    evidence: str
    severity: str = "issue"

    @property
    def title(self) -> str:
        """What the finding means."""
        return CATALOG[self.code][0]

    @property
    def fix(self) -> str:
        """The usual fix."""
        return CATALOG[self.code][1]

    def message(self) -> str:
        """One line naming the finding, the evidence and the fix."""
        where = "fit start" if self.epoch is None else f"epoch {self.epoch}"
        return f"ShuffleAudit {where}: {self.code} ({self.title}): {self.evidence}. Fix: {self.fix}."

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and checkpoints."""
        return {**asdict(self), "title": self.title, "fix": self.fix}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(data["code"], data.get("epoch"), data["evidence"], data.get("severity", "issue"))


@dataclass
class EpochVerdict:
    """Everything the audit measured in one epoch and what it concluded.

    Attributes:
        epoch: The epoch.
        metrics: Scalars by name (``coverage``, ``spearman``, ...); absent when not measurable.
        findings: What was found.
        notes: Why a check was skipped, in words.
    """

    epoch: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochVerdict:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data.get("epoch"),
            dict(data.get("metrics", {})),
            [Finding.from_dict(f) for f in data.get("findings", [])],
            list(data.get("notes", [])),
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
        lines.append(f"- **{f.code}**{tag}: {f.title}. {f.evidence}. *Fix:* {f.fix}.")
    lines.extend(f"- note: {note}" for note in verdict.notes)
    if verdict.findings or verdict.notes:
        lines.append("")
    if verdict.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in verdict.metrics.items()]
    return "\n".join(lines).rstrip()


def summary(verdicts: list[EpochVerdict]) -> str:
    """One paragraph over a whole fit: the findings by code with the epochs they occurred in.

    Example:
        >>> vs = [EpochVerdict(0), EpochVerdict(1, findings=[Finding("order_unchanged", 1, "Spearman 1.000")])]
        >>> summary(vs)
        'ShuffleAudit: 2 audits, 1 issue: order_unchanged (epochs 1).'
        >>> summary([EpochVerdict(0)])
        'ShuffleAudit: 1 audit, no issue: every epoch was a fresh, complete shuffle.'
    """
    by_code: dict[str, list[str]] = {}
    count = 0
    for v in verdicts:
        for f in v.issues:
            count += 1
            by_code.setdefault(f.code, []).append("start" if f.epoch is None else str(f.epoch))
    n = len(verdicts)
    audits = f"{n} audit{'s' if n != 1 else ''}"
    if not count:
        return f"ShuffleAudit: {audits}, no issue: every epoch was a fresh, complete shuffle."
    parts = "; ".join(f"{code} (epochs {', '.join(epochs)})" for code, epochs in by_code.items())
    return f"ShuffleAudit: {audits}, {count} issue{'s' if count != 1 else ''}: {parts}."
