"""Judging a resumed fit: the epoch a checkpoint cut, whole, and an epoch after a resume that replays an earlier one.

A checkpoint taken mid-epoch carries the audit's *partial record* of the cut epoch: the ids the loop consumed before
the cut, in order, and the batch sizes (int32 when the ids fit, so 4 bytes a consumed sample: at most 40 MB for a
10-million-sample epoch, 20 MB for one cut half-way; ``benchmarks/resume_state.py`` measures it). The order is kept
exactly, not as a bitmap, so that the resumed epoch's order digest is the uninterrupted epoch's when the resume is
exact, and a resumed fit can be compared with an uninterrupted one digest for digest. After the resume, the part
before the cut and the part after it are judged together as one epoch (coverage, duplicates, order), and
:func:`judge_cut_epoch` says whether the part after the cut continued the epoch: a sampler without replacement never
presents a sample twice in one epoch, so every sample of the part after the cut that the part before it already
presented was replayed.

Under DDP every rank has its own part before the cut, and Lightning writes rank 0's callback state only: the audit
gathers every rank's part into the checkpoint when it is saved (every rank builds the checkpoint, so the collective is
safe), keyed by rank, and each rank takes its own back on a resume with the same number of ranks. Each rank counts
what it presented after the resume that any rank presented before the cut (:func:`cut_part`), and rank 0 adds the
counts up. Resumed on another number of ranks, the cut epoch cannot be joined: it is not judged, and a notice says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from epochkit.audit.findings import Finding
from epochkit.audit.payload import CutPart, LoaderConfig

CODE = "resume_replayed"
_SET_EPOCH = "add epochkit.SetEpoch() to the Trainer's callbacks (it sets the sampler's epoch before the loader is "


def resume_remedy(config: Mapping[str, Any], boundary: bool = False) -> str:
    """The fix for a replay after a resume, from what the loader's configuration says about its cause.

    Example:
        >>> print(resume_remedy({"stateful_loader": False, "sampler": "RandomSampler"}))  # doctest: +ELLIPSIS
        Lightning cannot restore a plain DataLoader's position, so on a mid-epoch resume it restarts the epoch...
        >>> cfg = {"stateful_loader": True, "sampler": "DistributedSampler", "sampler_set_epoch": True}
        >>> print(resume_remedy(cfg))  # doctest: +ELLIPSIS
        Lightning restores the loader and starts its iterator before it calls sampler.set_epoch(epoch)...
    """
    sampler = config.get("sampler") or "sampler"
    if config.get("sampler_set_epoch") and not config.get("stateful_sampler"):
        when = "at the first epoch after the resume" if boundary else "on a mid-epoch resume"
        return (
            f"Lightning restores the loader and starts its iterator before it calls sampler.set_epoch(epoch) {when} "
            f"(Lightning #21938), so the {sampler} draws the permutation of the epoch it last had (epoch 0 in a fresh "
            f"process): {_SET_EPOCH}restored and the iterator starts)"
        )
    if not boundary and not config.get("stateful_loader"):
        return (
            "Lightning cannot restore a plain DataLoader's position, so on a mid-epoch resume it restarts the epoch "
            "with a fresh pass and stops it at the epoch's length: samples of the cut epoch are seen twice and others "
            "never. Use torchdata.stateful_dataloader.StatefulDataLoader with a stateful sampler (its RandomSampler), "
            "or resume from end-of-epoch checkpoints only"
        )
    if config.get("generator") and not config.get("stateful_sampler"):
        return (
            f"the {sampler}'s torch.Generator is not in the checkpoint: the resumed process draws the permutation "
            "from the generator's initial state again. Use torchdata.stateful_dataloader.sampler.RandomSampler (the "
            "loader's state holds its generator), or a sampler whose order depends on (seed, epoch) through set_epoch"
        )
    return (
        "the loader's state in the checkpoint does not hold what decides its order: make it stateful (torchdata's "
        "StatefulDataLoader and RandomSampler) or derive the order from (seed, epoch)"
    )


def cut_part(
    before: np.ndarray,
    after: np.ndarray,
    config: LoaderConfig,
    earlier: np.ndarray | None = None,
    previous: np.ndarray | None = None,
    previous_epoch: int | None = None,
) -> CutPart | None:
    """One rank's cut epoch as counts: its part before the cut (``before``), its part after the resume (``after``)
    and how many of those it presented had been presented before the cut, by this rank or another (``earlier``: every
    rank's part before the cut, default ``before``); None when there is nothing to judge (a sampler that draws with
    replacement or that is not a permutation, or an empty part).

    ``previous`` (the previous epoch's whole order on this rank, when kept in full) names an older order the part after
    the resume follows: from the cut on (a sampler that fast-forwarded through an old permutation), or from its start (a
    loader that restarted the epoch from the same seed, e.g. a plain ``DataLoader`` after ``seed_everything``).

    Example:
        >>> cfg = {"design": "sample", "dataset_size": 8}
        >>> cut_part(np.array([5, 2, 7, 0]), np.array([3, 2, 1, 0]), cfg, previous=np.arange(8)[::-1], previous_epoch=0)
        CutPart(before=4, after=4, twice=2, distinct=6, follows="epoch 0's order from the cut on")
    """
    if config.get("design") != "sample" or config.get("replacement") or before.size == 0 or after.size == 0:
        return None
    twice = int(np.isin(after, before if earlier is None else earlier).sum())
    distinct = int(np.unique(np.concatenate([before, after])).size)
    follows = ""
    if twice and previous is not None and previous_epoch is not None:
        tail = previous[before.size : before.size + after.size]
        if tail.size == after.size and np.array_equal(tail, after):
            follows = f"epoch {previous_epoch}'s order from the cut on"
        elif np.array_equal(previous[: after.size], after):  # a fresh pass, from the same seed as that epoch
            follows = f"epoch {previous_epoch}'s order from its start"
    return CutPart(int(before.size), int(after.size), twice, distinct, follows)


def judge_cut_epoch(
    epoch: int,
    parts: Sequence[CutPart | None],
    config: LoaderConfig,
    loader: str | None = None,
    distinct: int | None = None,
) -> Finding | None:
    """Whether the part of a cut epoch presented after the resume continued the part before the cut, over every
    rank's :func:`cut_part` (in rank order), for a sampler that draws each sample once an epoch; None when it did (or
    cannot be told). ``distinct``: the distinct samples of the whole epoch over all ranks, when known exactly (one
    rank's count serves on one process).

    Example:
        >>> cfg = {"design": "sample", "dataset_size": 8, "stateful_loader": True, "sampler": "DistributedSampler",
        ...        "sampler_set_epoch": True}
        >>> judge_cut_epoch(1, [cut_part(np.array([5, 2, 7, 0]), np.array([1, 3, 4, 6]), cfg)], cfg) is None
        True
        >>> part = cut_part(np.array([5, 2, 7, 0]), np.array([3, 2, 1, 0]), cfg, None, np.arange(8)[::-1], 0)
        >>> f = judge_cut_epoch(1, [part], cfg)
        >>> f.code, f.evidence.split("; ")  # doctest: +NORMALIZE_WHITESPACE
        ('resume_replayed', ['after the mid-epoch resume (4 of 8 samples presented before the cut), 2 of the 4 samples
        presented after it had already been seen before the cut (seen twice)', "2 of the data set's 8 samples were
        never seen this epoch", "the part after the resume is epoch 0's order from the cut on"])
    """
    found = [p for p in parts if p is not None]
    twice = sum(p.twice for p in found)
    if twice == 0:
        return None
    before, after = sum(p.before for p in found), sum(p.after for p in found)
    if distinct is None and len(parts) == 1:
        distinct = found[0].distinct
    size = config.get("dataset_size")
    never = ""
    if size and distinct is not None:
        never = f"; {size - distinct} of the data set's {size} samples were never seen this epoch"
    where = f" on {len(parts)} ranks" if len(parts) > 1 else ""
    follows = ""
    for rank, p in enumerate(parts):
        if p is not None and p.follows:
            whose = f"rank {rank}'s part" if len(parts) > 1 else "the part"
            follows += f"; {whose} after the resume is {p.follows}"
    evidence = (
        f"after the mid-epoch resume{where} ({before} of {before + after} samples presented before the cut), "
        f"{twice} of the {after} samples presented after it had already been seen before the cut (seen twice)"
        f"{never}{follows}"
    )
    return Finding(CODE, epoch, evidence, "issue", loader, resume_remedy(config))


def judge_replayed_epoch(
    epoch: int,
    digest: str,
    earlier: Mapping[int, str],
    resumed_at: int,
    config: LoaderConfig,
    loader: str | None = None,
) -> Finding | None:
    """An epoch after a resume whose whole order (``digest``) is exactly that of an epoch trained before the resume
    (``earlier``: epoch -> merged digest); None otherwise.

    Example:
        >>> cfg = {"sampler": "DistributedSampler", "sampler_set_epoch": True, "num_workers": 2}
        >>> f = judge_replayed_epoch(2, "ab", {0: "ab", 1: "cd"}, 2, cfg)
        >>> f.evidence
        'the fit resumed at epoch 2 and epoch 2 presented exactly the order of epoch 0 (order digest ab)'
    """
    matches = sorted(e for e, d in earlier.items() if d == digest and e < resumed_at and e != epoch)
    if not matches or not digest:
        return None
    evidence = (
        f"the fit resumed at epoch {resumed_at} and epoch {epoch} presented exactly the order of epoch {matches[0]} "
        f"(order digest {digest})"
    )
    return Finding(CODE, epoch, evidence, "issue", loader, resume_remedy(config, boundary=True))


def pack_partial(epoch: int, ids: np.ndarray, sizes: np.ndarray) -> dict[str, Any]:
    """The cut epoch's partial record as checkpoint state: ids as int32 when they fit (else int64), batch sizes as
    int32, as tensors (``torch.load(weights_only=True)`` reads them back).

    Example:
        >>> state = pack_partial(3, np.array([4, 1, 0]), np.array([2, 1]))
        >>> state["epoch"], state["ids"].dtype, unpack_partial(state)[1].tolist()
        (3, torch.int32, [4, 1, 0])
    """
    small = ids.size == 0 or (int(ids.min()) >= np.iinfo(np.int32).min and int(ids.max()) <= np.iinfo(np.int32).max)
    return {
        "epoch": int(epoch),
        "ids": torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32 if small else np.int64)),
        "sizes": torch.from_numpy(np.ascontiguousarray(sizes, dtype=np.int32)),
    }


def unpack_partial(state: Mapping[str, Any]) -> tuple[int, np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_partial`: ``(epoch, ids, sizes)`` as int64 arrays."""

    def array(value: Any) -> np.ndarray:
        return (value.numpy() if hasattr(value, "numpy") else np.asarray(value)).astype(np.int64)

    return int(state["epoch"]), array(state["ids"]), array(state["sizes"])


def earlier_digests(verdicts: Sequence[Any], key: str) -> dict[int, str]:
    """``{epoch: merged digest}`` of one loader over verdicts (:class:`~epochkit.audit.findings.EpochVerdict`)."""
    out = {}
    for verdict in verdicts:
        digest = verdict.digests.get(key, {}).get("merged") if verdict.epoch is not None else None
        if digest:
            out[int(verdict.epoch)] = str(digest)
    return out
