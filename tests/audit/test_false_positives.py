"""Healthy shuffled runs are never flagged: 20 seeds of real fits (with and without workers, drop_last, odd sizes),
two real DDP fits, and thousands of fresh permutations through the pure statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from epochkit import ShuffleAudit
from epochkit.audit import functional as F
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit
from tests.helpers import fit_ddp


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
