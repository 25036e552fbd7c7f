"""Fold plans equal scikit-learn's folds, are checked for leakage, and bad input fails before any training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    ShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    TimeSeriesSplit,
)

from epochkit.cv import CrossValidator, FoldPlan, check_plan, make_plan
from epochkit.cv.splits import default_splitter

N = 40
LABELS = np.arange(N) % 4
GROUPS = np.arange(N) // 5


def _sklearn_folds(splitter, y=None, g=None) -> list[tuple[list[int], list[int]]]:
    return [(sorted(tr.tolist()), sorted(va.tolist())) for tr, va in splitter.split(np.zeros((N, 1)), y, g)]


def _plan_folds(plan: FoldPlan) -> list[tuple[list[int], list[int]]]:
    return [(tr.tolist(), va.tolist()) for tr, va in zip(plan.train, plan.val, strict=True)]


@pytest.mark.parametrize(
    ("splitter", "y", "g"),
    [
        (KFold(4, shuffle=True, random_state=3), None, None),
        (StratifiedKFold(4, shuffle=True, random_state=3), LABELS, None),
        (GroupKFold(4), None, GROUPS),
        (StratifiedGroupKFold(2, shuffle=True, random_state=3), LABELS, GROUPS),
        (TimeSeriesSplit(3), None, None),
        (ShuffleSplit(3, test_size=0.25, random_state=3), None, None),
    ],
    ids=lambda v: type(v).__name__ if hasattr(v, "split") else None,
)
def test_plan_equals_the_sklearn_splitter(splitter, y, g) -> None:
    plan = make_plan(splitter, N, labels=y, groups=g, stratified="Stratified" in type(splitter).__name__)
    assert _plan_folds(plan) == _sklearn_folds(splitter, y, g)
    assert plan.partitioning == (type(splitter).__name__ not in ("TimeSeriesSplit", "ShuffleSplit"))


def test_default_splitters_are_seeded_and_plans_repeat_exactly() -> None:
    assert repr(default_splitter(3, True, False, 7)) == "StratifiedKFold(n_splits=3, random_state=7, shuffle=True)"
    assert type(default_splitter(3, False, True, 7)).__name__ == "GroupKFold"
    assert type(default_splitter(3, True, True, 7)).__name__ == "StratifiedGroupKFold"
    a = make_plan(default_splitter(5, False, False, 1), N)
    b = make_plan(default_splitter(5, False, False, 1), N)
    c = make_plan(default_splitter(5, False, False, 2), N)
    assert a.hash == b.hash != c.hash
    assert FoldPlan.from_manifest(a.to_manifest()).hash == a.hash


def test_groups_are_never_split() -> None:
    plan = make_plan(GroupKFold(4), N, groups=GROUPS)
    for tr, va in zip(plan.train, plan.val, strict=True):
        assert not set(GROUPS[tr]) & set(GROUPS[va])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"splitter": KFold(41)}, "more than the 40 samples"),
        ({"splitter": StratifiedKFold(5), "labels": np.r_[np.zeros(36), np.ones(4)]}, r"class\(es\) \{1.0: 4\}"),
        ({"splitter": KFold(3), "labels": np.zeros(39)}, "`labels` has 39 entries but .* 40 samples"),
        ({"splitter": GroupKFold(3), "groups": np.zeros(41)}, "`groups` has 41 entries"),
        ({"splitter": KFold(3, shuffle=True)}, "unseeded"),
        ({"splitter": StratifiedKFold(3, shuffle=True, random_state=0)}, "no labels were found"),
    ],
)
def test_bad_input_fails_clearly(kwargs, message) -> None:
    splitter = kwargs.pop("splitter")
    with pytest.raises(ValueError, match=message):
        make_plan(splitter, N, stratified="Stratified" in type(splitter).__name__, **kwargs)


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="`n_splits` must be an int >= 2, got 1"):
        CrossValidator(1)
    with pytest.raises(ValueError, match="disagrees"):
        CrossValidator(3, splitter=KFold(4))
    with pytest.raises(ValueError, match="`reset`"):
        CrossValidator(reset="zeros")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="split"):
        CrossValidator(splitter=object())


def test_leakage_checks_catch_overlap_double_validation_and_split_groups() -> None:
    a, b = np.array([0, 1]), np.array([2, 3])
    with pytest.raises(ValueError, match="fold 1 trains and validates on the same samples: \\[2\\]"):
        check_plan(FoldPlan(4, (b, np.array([0, 2])), (a, b), "x", True))
    with pytest.raises(ValueError, match=r"samples \[0, 1, 2, 3\] are validated \[2, 2, 0, 0\] times"):
        check_plan(FoldPlan(4, (b, b), (a, a), "KFold", True))
    with pytest.raises(ValueError, match=r"fold 0 splits group\(s\) \[0, 1\]"):
        check_plan(FoldPlan(4, (np.array([1, 2]), a), (np.array([0, 3]), b), "x", False), groups=[0, 0, 1, 1])


def test_groups_and_labels_can_name_dataset_attributes() -> None:
    from torch.utils.data import TensorDataset

    dataset = TensorDataset(torch.zeros(N, 2))
    dataset.patient = torch.as_tensor(GROUPS)
    plan = CrossValidator(4, groups="patient")._plan(dataset)
    assert _plan_folds(plan) == _sklearn_folds(GroupKFold(4), g=GROUPS)
    wrong = r"`labels='kind'` names no attribute, .* \(TensorDataset\); its attributes are \['patient', 'tensors'\]"
    with pytest.raises(ValueError, match=wrong):
        CrossValidator(4, stratify=True, labels="kind")._plan(dataset)
