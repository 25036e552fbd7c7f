"""Aggregates (Student-t interval without scipy), the results table and files, and the fold ensemble."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from epochkit.cv import CVResult, FoldEnsemble, FoldResult
from epochkit.cv.results import best_of, metric_mode
from epochkit.cv.stats import student_t_cdf, student_t_quantile, summarize

# Two-sided 95% critical values from a printed t table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045, 120: 1.980}


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=6e-4)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_t_quantile_matches_closed_forms(p: float) -> None:
    assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert student_t_cdf(student_t_quantile(p, 7.5), 7.5) == pytest.approx(p, abs=1e-10)
    assert student_t_quantile(1 - p, 3) == pytest.approx(-student_t_quantile(p, 3))
    assert student_t_quantile(p, math.inf) == pytest.approx(student_t_quantile(p, 1e7), rel=1e-5)


def test_summarize() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(math.sqrt(2.5))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((3 - half, 3 + half))
    assert math.isnan(summarize([1.0])["std"]) and summarize([float("nan"), 2.0])["n"] == 1


def test_best_follows_the_metric_direction() -> None:
    history = [
        {"epoch": e, "metrics": {"val_loss": v, "val_acc": a}}
        for e, (v, a) in enumerate([(3, 0.5), (1, 0.9), (2, 0.7)])
    ]
    assert best_of(history) == ({"val_loss": 1.0, "val_acc": 0.9}, {"val_loss": 1, "val_acc": 1})
    assert best_of(history, {"val_acc": "min"})[0]["val_acc"] == 0.5
    assert metric_mode("val_mae") == "min" and metric_mode("val_f1") == "max"
    for name in ("val_mape", "val/smape", "train-kl", "val_bce", "val_loss_epoch", "epoch_time"):
        assert metric_mode(name) == "min", name
    for name in ("val_cancer_recall", "val_concern_acc", "val_auroc", "val_precision"):
        assert metric_mode(name) == "max", name


def _result(tmp_path: Path) -> CVResult:
    folds = [
        FoldResult(fold=k, n_train=8, n_val=2, last={"val_acc": a, "val_loss": 1 - a}, best={"val_acc": a + 0.01})
        for k, a in enumerate([0.8, 0.9, 0.85])
    ]
    return CVResult(folds=folds, root_dir=str(tmp_path), n_splits=3)


def test_table_json_and_csv(tmp_path: Path) -> None:
    result = _result(tmp_path)
    result.save()
    table = result.table()
    assert re.search(r"val_acc \(last\)\s+0.8000\s+0.9000\s+0.8500\s+0.8500\s+0.0500\s+\[0.7258, 0.9742\]", table)
    assert "val_loss (best)" not in table  # no fold has it
    data = json.loads((tmp_path / "cv_results.json").read_text())
    assert data["aggregate"]["last"]["val_acc"]["mean"] == pytest.approx(0.85)
    assert data["aggregate"]["last"]["val_acc"]["ci_high"] == pytest.approx(0.85 + 4.303 * 0.05 / math.sqrt(3), 1e-3)
    rows = list(csv.DictReader((tmp_path / "cv_results.csv").open()))
    assert [r["fold"] for r in rows] == ["0", "1", "2", "mean", "std", "ci_low", "ci_high"]
    assert float(rows[1]["last/val_acc"]) == 0.9 and float(rows[3]["best/val_acc"]) == pytest.approx(0.86)


def test_ensemble_averages_the_fold_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    members = [nn.Linear(3, 2) for _ in range(3)]
    result = _result(tmp_path)
    for fold, member in zip(result.folds, members, strict=True):
        fold.model_path = str(tmp_path / f"m{fold.fold}.pt")
        torch.save(member.state_dict(), fold.model_path)
    ensemble = result.ensemble(model=nn.Linear(3, 2))
    x = torch.randn(5, 3)
    assert isinstance(ensemble, FoldEnsemble) and not ensemble.training
    torch.testing.assert_close(ensemble(x), sum(m(x) for m in members) / 3)
    probs = result.ensemble(model=nn.Linear(3, 2), transform=lambda z: z.softmax(-1))(x)
    torch.testing.assert_close(probs, sum(m(x).softmax(-1) for m in members) / 3)
    with pytest.raises(ValueError, match="needs `model=`"):
        result.ensemble()
