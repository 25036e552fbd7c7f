"""Fold plans: which samples each fold trains and validates on, made once, checked for leakage, and pinned in a
manifest so that every rank and every rerun uses the same folds. Pure functions over index arrays; no Trainer.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FoldPlan", "check_plan", "default_splitter", "make_plan"]

# Splitters whose validation folds partition the samples: each one is validated exactly once.
PARTITIONING_SPLITTERS = frozenset(
    {"KFold", "StratifiedKFold", "GroupKFold", "StratifiedGroupKFold", "LeaveOneOut", "LeaveOneGroupOut"}
)


@dataclass(frozen=True)
class FoldPlan:
    """The folds as sorted index arrays into the training dataset, plus what made them."""

    n_samples: int
    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]
    splitter: str
    partitioning: bool

    @property
    def n_splits(self) -> int:
        return len(self.val)

    @property
    def hash(self) -> str:
        """SHA-256 of the sample count and every fold's indices: equal hashes, equal folds."""
        h = hashlib.sha256(f"n={self.n_samples};".encode())
        for k, (tr, va) in enumerate(zip(self.train, self.val, strict=True)):
            h.update(f"fold{k}:train:".encode() + np.asarray(tr, dtype=np.int64).tobytes())
            h.update(f"fold{k}:val:".encode() + np.asarray(va, dtype=np.int64).tobytes())
        return h.hexdigest()

    def to_manifest(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "n_splits": self.n_splits,
            "splitter": self.splitter,
            "partitioning": self.partitioning,
            "hash": self.hash,
            "folds": [{"train": tr.tolist(), "val": va.tolist()} for tr, va in zip(self.train, self.val, strict=True)],
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> FoldPlan:
        return cls(
            n_samples=int(manifest["n_samples"]),
            train=tuple(np.asarray(f["train"], dtype=np.int64) for f in manifest["folds"]),
            val=tuple(np.asarray(f["val"], dtype=np.int64) for f in manifest["folds"]),
            splitter=str(manifest.get("splitter", "")),
            partitioning=bool(manifest.get("partitioning", False)),
        )


def default_splitter(n_splits: int, stratify: bool, grouped: bool, seed: int) -> Any:
    """The scikit-learn splitter for the settings: ``KFold``/``StratifiedKFold`` shuffled with ``seed``,
    ``GroupKFold`` with groups, ``StratifiedGroupKFold`` with both.

    Example:
        >>> default_splitter(5, stratify=False, grouped=False, seed=0)
        KFold(n_splits=5, random_state=0, shuffle=True)
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if stratify and grouped:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    if stratify:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    if grouped:
        return GroupKFold(n_splits=n_splits)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _check_deterministic(splitter: Any) -> None:
    rs = getattr(splitter, "random_state", None)
    shuffles = getattr(splitter, "shuffle", True)
    if shuffles and hasattr(splitter, "random_state") and (rs is None or isinstance(rs, np.random.RandomState)):
        raise ValueError(
            f"`splitter={splitter!r}` draws its folds from an unseeded or stateful random state, so folds would "
            "differ between reruns and ranks; pass an int `random_state`."
        )


def make_plan(
    splitter: Any,
    n_samples: int,
    labels: Sequence[Any] | np.ndarray | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    stratified: bool = False,
) -> FoldPlan:
    """Run ``splitter.split`` once over ``n_samples`` samples and check the result with :func:`check_plan`.

    Raises:
        ValueError: Before anything is split, for fewer than 2 folds or more folds than samples, labels or groups
            whose length is not ``n_samples``, a stratified split with a class rarer than the number of folds, or
            a shuffling splitter without an int seed.

    Example:
        >>> from sklearn.model_selection import KFold
        >>> plan = make_plan(KFold(3), 6)
        >>> [v.tolist() for v in plan.val]
        [[0, 1], [2, 3], [4, 5]]
    """
    if labels is not None and len(labels) != n_samples:
        raise ValueError(f"`labels` has {len(labels)} entries but the training dataset has {n_samples} samples.")
    if groups is not None and len(groups) != n_samples:
        raise ValueError(f"`groups` has {len(groups)} entries but the training dataset has {n_samples} samples.")
    _check_deterministic(splitter)
    y = None if labels is None else np.asarray(labels)
    g = None if groups is None else np.asarray(groups)
    name = type(splitter).__name__
    if stratified and y is None:
        raise ValueError(
            f"{name} stratifies by label, but no labels were found: pass `labels=` to CrossValidator, or give the "
            "dataset a `targets` attribute (or a TensorDataset whose last tensor holds the labels)."
        )
    x = np.zeros((n_samples, 1), dtype=np.int8)  # splitters only look at len(X)
    n_splits = int(splitter.get_n_splits(x, y, g))
    if n_splits < 2:
        raise ValueError(f"`n_splits` must be >= 2, got {n_splits} from {splitter!r}.")
    if n_splits > n_samples:
        raise ValueError(f"`n_splits={n_splits}` is more than the {n_samples} samples of the training dataset.")
    if stratified and y is not None:
        counts = Counter(y.tolist())
        rare = {c: n for c, n in counts.items() if n < n_splits}
        if rare:
            raise ValueError(
                f"stratified {n_splits}-fold needs at least {n_splits} samples of every class, but class(es) "
                f"{dict(sorted(rare.items(), key=str))} have fewer (sample counts); lower `n_splits` or merge classes."
            )
    if g is not None and name in {"GroupKFold", "StratifiedGroupKFold"} and len(set(g.tolist())) < n_splits:
        raise ValueError(f"{name} with {n_splits} folds needs at least {n_splits} distinct groups.")
    train, val = [], []
    for tr, va in splitter.split(x, y, g):
        train.append(np.sort(np.asarray(tr, dtype=np.int64)))
        val.append(np.sort(np.asarray(va, dtype=np.int64)))
    plan = FoldPlan(n_samples, tuple(train), tuple(val), repr(splitter), name in PARTITIONING_SPLITTERS)
    check_plan(plan, groups=g)
    return plan


def check_plan(plan: FoldPlan, groups: Sequence[Any] | np.ndarray | None = None) -> None:
    """Leakage checks: indices in range and unique, train and validation disjoint in every fold, every sample
    validated exactly once for partitioning splitters (K-fold style), and no group on both sides of a fold.

    Raises:
        ValueError: Naming the fold and the offending samples or groups.

    Example:
        >>> bad = FoldPlan(4, (np.array([0, 1]), np.array([1, 2])), (np.array([1, 3]), np.array([0, 3])), "x", True)
        >>> check_plan(bad)
        Traceback (most recent call last):
        ...
        ValueError: fold 0 trains and validates on the same samples: [1]
    """
    g = None if groups is None else np.asarray(groups)
    for k, (tr, va) in enumerate(zip(plan.train, plan.val, strict=True)):
        for side, idx in (("train", tr), ("validation", va)):
            if idx.size and (idx.min() < 0 or idx.max() >= plan.n_samples):
                raise ValueError(f"fold {k} {side} indices fall outside [0, {plan.n_samples}).")
            if np.unique(idx).size != idx.size:
                raise ValueError(f"fold {k} repeats samples in its {side} set.")
        if va.size == 0:
            raise ValueError(f"fold {k} has an empty validation set.")
        both = np.intersect1d(tr, va)
        if both.size:
            raise ValueError(f"fold {k} trains and validates on the same samples: {both[:10].tolist()}")
        if g is not None:
            split_groups = np.intersect1d(g[tr], g[va])
            if split_groups.size:
                raise ValueError(f"fold {k} splits group(s) {split_groups[:10].tolist()} across train and validation.")
    if plan.partitioning:
        counts = np.bincount(np.concatenate(plan.val), minlength=plan.n_samples)
        wrong = np.flatnonzero(counts != 1)
        if wrong.size:
            raise ValueError(
                f"{plan.splitter} should validate every sample exactly once, but samples {wrong[:10].tolist()} are "
                f"validated {counts[wrong[:10]].tolist()} times."
            )
