"""Healthy shuffled runs are never flagged: 20 seeds of real fits (with and without workers, drop_last, odd sizes),
two real DDP fits, and thousands of fresh permutations through the pure statistics."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from epochkit import ShuffleAudit
from epochkit.audit import functional as F
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit
from tests.helpers import fit_ddp, quiet_trainer


@pytest.mark.parametrize("seed", range(20))
def test_healthy_fits_flag_nothing_over_20_seeds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 400))
    batch_size = int(rng.choice([1, 4, 8, 16, 32]))
    loader = {"drop_last": bool(seed % 3 == 0)}
    if seed % 5 == 0:
        loader["num_workers"] = 2
    dm = AuditDataModule(n=n, classes=int(rng.integers(2, 10)), batch_size=batch_size, seed=seed, **loader)
    audit = ShuffleAudit(on_issue="raise", labels=1 if seed % 2 else None, max_samples=None if seed % 4 else 100)
    fit([audit], dm, max_epochs=3, limit_train_batches=1.0 if seed % 7 else 0.5)
    assert audit.fit_start_ is not None and not audit.fit_start_.findings
    assert all(not v.findings for v in audit.verdicts_), [v.to_dict() for v in audit.verdicts_]
    assert [v.epoch for v in audit.verdicts_] == [0, 1, 2]
    assert "spearman" in audit.verdicts_[2].metrics or batch_size * 3 < 10


@pytest.mark.ddp
@pytest.mark.parametrize("num_workers", [0, 1])
def test_healthy_ddp_fits_flag_nothing(num_workers: int, tmp_path: Path) -> None:
    audit = ShuffleAudit(on_issue="raise", labels=1)
    # 201 samples over 2 ranks: the DistributedSampler pads one sample, which is no overlap. One persistent worker
    # per rank keeps the run cheap while indices still come from the main process's prefetching loader.
    loader = {"num_workers": num_workers, "persistent_workers": bool(num_workers)}
    dm = AuditDataModule(n=201, batch_size=8, seed=20 + num_workers, **loader)
    reports = fit_ddp(_data.model(), dm, tmp_path, [audit], max_epochs=3, limit_val_batches=0)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    for report in reports:
        state = report.callback_states[audit.state_key]
        assert not state["fit_start"]["findings"]
        assert [v["epoch"] for v in state["verdicts"]] == [0, 1, 2]
        assert all(not v["findings"] for v in state["verdicts"]), state["verdicts"]
        assert state["verdicts"][0]["metrics"]["coverage"] == 1.0
        assert state["verdicts"][0]["metrics"]["rank_overlap"] <= 1 / 201


def test_fresh_permutations_never_cross_the_order_thresholds() -> None:
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(10, 3000))
        batch = int(rng.integers(1, 64))
        prev, cur = rng.permutation(n), rng.permutation(n)
        batches = np.arange(n) // batch
        s = F.order_stats(prev, batches, cur, batches)
        assert abs(s.spearman) <= F.spearman_threshold(n), (trial, n, s)
        if s.cobatch_expected > 0:
            assert s.cobatch_ratio <= F.cobatch_threshold(s.cobatch_expected), (trial, n, batch, s)
        assert s.successors_preserved < F.successor_threshold(s.successor_pairs), (trial, n, s)


def test_shuffled_labels_never_cross_the_label_thresholds() -> None:
    rng = np.random.default_rng(1)
    for trial in range(500):
        n = int(rng.integers(20, 3000))
        weights = rng.dirichlet(np.ones(int(rng.integers(2, 20))))
        labels = rng.choice(weights.size, size=n, p=weights)
        batch = int(rng.integers(2, 128))
        s = F.label_stats(rng.permutation(labels), np.arange(n) // batch)
        assert not F.change_rate_flagged(s.changes, s.pairs, s.expected_change_rate), (trial, s)
        assert not F.entropy_flagged(s.batch_entropy, s.expected_batch_entropy, s.entropy_sd, s.batches), (trial, s)


def test_the_same_statistics_flag_the_bugs_they_are_for() -> None:
    """The thresholds are not so loose that the bugs pass: the control for the two tests above."""
    n, batch = 500, 20
    perm = np.random.default_rng(2).permutation(n)
    batches = np.arange(n) // batch
    same = F.order_stats(perm, batches, perm, batches)
    assert same.spearman > F.spearman_threshold(n)
    blocks = np.concatenate([perm[batch:], perm[:batch]])
    moved = F.order_stats(perm, batches, blocks, batches)
    assert moved.cobatch_ratio > F.cobatch_threshold(moved.cobatch_expected)
    labels = np.sort(np.random.default_rng(3).integers(0, 5, n))
    s = F.label_stats(labels, batches)
    assert F.change_rate_flagged(s.changes, s.pairs, s.expected_change_rate)
    assert F.entropy_flagged(s.batch_entropy, s.expected_batch_entropy, s.entropy_sd, s.batches)


def test_overfit_batches_replays_batches_on_purpose_and_is_not_flagged() -> None:
    audit = ShuffleAudit(on_issue="raise")
    fit([audit], AuditDataModule(), overfit_batches=2)
    assert all(not v.findings for v in audit.verdicts_)
    assert audit.verdicts_[-1].metrics["spearman"] == 1.0  # measured, just not an issue


@pytest.mark.parametrize(("n", "batch"), [(1000, 2), (200, 2), (1000, 3), (60, 2)])
def test_fresh_permutations_with_tiny_batches_never_cross_the_cobatch_threshold(n: int, batch: int) -> None:
    # With batch size 2 about 0.5 pairs meet again: the normal margin 1 + 6 / sqrt(0.5) flagged 5 re-met pairs,
    # which a fresh shuffle gives with probability 1.7e-4. The threshold is now the Poisson tail itself.
    rng = np.random.default_rng(n * 10 + batch)
    batches = np.arange(n) // batch
    worst = 0.0
    for _ in range(3000):
        s = F.order_stats(rng.permutation(n), batches, rng.permutation(n), batches)
        assert s.cobatch_ratio <= F.cobatch_threshold(s.cobatch_expected), (n, batch, s)
        worst = max(worst, s.cobatch_ratio * s.cobatch_expected)
    assert worst >= 2  # the loop did reach the tail region the old threshold mishandled


@pytest.mark.parametrize("expected", [0.05, 0.5, 0.5 * 999 / 998, 1.0, 2.0, 4.0, 10.0, 40.0, 1950.0])
def test_cobatch_threshold_is_a_poisson_tail_below_1e_9(expected: float) -> None:
    threshold = F.cobatch_threshold(expected)
    first_flagged = int(np.floor(threshold * expected)) + 1  # the smallest count with ratio > threshold
    assert F.poisson_tail(first_flagged, expected) < 1e-9
    assert threshold >= 2.0


def test_poisson_tail_matches_the_pmf_sum() -> None:
    from math import exp, factorial

    for mu in (0.3, 1.0, 4.5, 30.0):
        for k in (0, 1, 3, 10, 40):
            exact = 1.0 - sum(exp(-mu) * mu**j / factorial(j) for j in range(k))
            assert F.poisson_tail(k, mu) == pytest.approx(max(exact, 0.0), rel=1e-6, abs=1e-15), (mu, k)
    assert F.poisson_tail(120, 30.0) == pytest.approx(exp(-30.0) * 30.0**120 / factorial(120) * 1.3349, rel=0.01)


@pytest.mark.parametrize(
    ("n", "batch", "classes"),
    [(12, 6, 2), (30, 15, 2), (40, 10, 2), (64, 32, 2), (64, 16, 4), (32, 4, 2), (16, 2, 2), (50, 5, 3), (64, 8, 2)],
)
def test_shuffled_labels_in_few_batches_are_not_flagged_as_class_blocked(n: int, batch: int, classes: int) -> None:
    # Few full batches: a healthy shuffle of 12 samples in batches of 6 was flagged 7.7e-3 of the time, because the
    # mean entropy of two complementary batches is nothing like normal.
    rng = np.random.default_rng(n * 100 + batch)
    for trial in range(400):
        labels = rng.integers(0, classes, n) if trial % 2 else np.arange(n) % classes
        s = F.label_stats(rng.permutation(labels), np.arange(n) // batch)
        assert not F.entropy_flagged(
            s.batch_entropy, s.expected_batch_entropy, s.entropy_sd, s.batches, floor=s.entropy_floor
        ), (trial, s)


def test_class_blocked_few_batches_are_still_flagged() -> None:
    labels = np.repeat(np.arange(4), 16)  # 8 batches of 8, one class each
    s = F.label_stats(labels, np.arange(64) // 8)
    assert not np.isnan(s.entropy_floor)
    assert F.entropy_flagged(s.batch_entropy, s.expected_batch_entropy, s.entropy_sd, s.batches, floor=s.entropy_floor)


def test_a_tiny_healthy_fit_is_not_flagged_over_many_epochs() -> None:
    # The reviewer's run: 12 samples, batch 6, 2 balanced classes, shuffle=True, flagged at epochs 120, 155, 177.
    pl.seed_everything(0)
    x, _ = _data.make_tensors(12, 2, 0)
    data = _data.LabelledSet(x, torch.tensor([0, 1] * 6))
    audit = ShuffleAudit(on_issue="raise")
    trainer = quiet_trainer(None, [audit], max_epochs=200)
    trainer.fit(_data.model(), DataLoader(data, batch_size=6, shuffle=True))
    assert len(audit.verdicts_) == 200
