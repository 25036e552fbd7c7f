"""Length-grouped and bucketed batching re-meet similar samples by design: quiet (at most a notice naming the cause)
over 20 seeds each, with one real Trainer fit each; the same samplers replaying are issues."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from epochkit import SetEpoch, ShuffleAudit
from epochkit.audit.recording import describe_loader
from epochkit.audit.verdicts import epoch_payload, judge_epoch
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit

NOTICES = {"weak_mixing", "correlated_batches"}


def test_a_length_grouped_fit_is_quiet_and_its_notice_names_the_cause() -> None:
    # 800 samples in batches of 8: 2 megabatches of 50 batches, each sorted by length (HF's group_by_length).
    audit = ShuffleAudit(on_issue="raise", labels=1)
    fit([audit], AuditDataModule(n=800, batch_size=8, sampler=_data.length_grouped), max_epochs=3)
    assert audit.configs_["train_dataloader"][0]["design"] == "custom"
    assert all(not v.issues for v in audit.verdicts_)
    notices = [f for v in audit.verdicts_ for f in v.findings]
    assert notices and {f.code for f in notices} <= NOTICES
    assert "LengthGroupedSampler keeps samples together across epochs" in notices[0].fix


def test_a_bucketed_fit_with_set_epoch_is_quiet() -> None:
    audit = ShuffleAudit(on_issue="raise", labels=1)
    fit([audit, SetEpoch()], AuditDataModule(n=320, batch_size=8, batch_sampler=_data.bucketed), max_epochs=3)
    assert all(not v.issues for v in audit.verdicts_)
    assert {f.code for v in audit.verdicts_ for f in v.findings} <= NOTICES


def _judged(loader: DataLoader, set_epoch: object) -> list:
    config = describe_loader(loader)
    verdicts, previous = [], None
    for epoch in range(2):
        set_epoch(epoch)  # type: ignore[operator]
        batches = list(loader.batch_sampler)  # the index batches the recorder sees
        ids = np.concatenate(batches)
        sizes = np.array([len(b) for b in batches])
        payload = epoch_payload(ids, sizes, source="sampler indices", dataset_size=len(ids))
        verdict, previous = judge_epoch(epoch, [payload], [config], previous, epoch - 1 if epoch else None)
        verdicts.append(verdict)
    return verdicts


def _seeded(seed: int) -> tuple[int, int, np.random.Generator]:
    rng = np.random.default_rng(seed)
    batch = int(rng.choice([2, 4, 8, 16, 32]))
    return batch, int(rng.integers(100 * batch, 300 * batch)), rng  # 2 to 6 megabatches of 50 batches


@pytest.mark.parametrize("seed", range(20))
def test_length_grouped_batching_flags_no_issue_over_20_seeds(seed: int) -> None:
    batch, n, _ = _seeded(seed)
    sampler = _data.LengthGroupedSampler(_data.lengths_of(n, seed), batch, seed=seed)
    loader = DataLoader(range(n), batch_size=batch, sampler=sampler)  # type: ignore[arg-type]
    verdicts = _judged(loader, sampler.set_epoch)  # Lightning calls a sampler's set_epoch
    assert all(not v.issues for v in verdicts), (n, batch, [v.to_dict() for v in verdicts])
    assert all({f.code for f in v.findings} <= NOTICES for v in verdicts)


@pytest.mark.parametrize("seed", range(20))
def test_bucketed_batching_flags_no_issue_over_20_seeds(seed: int) -> None:
    batch, _, rng = _seeded(100 + seed)
    buckets = int(rng.choice([2, 4, 8, 16]))
    n = int(rng.integers(2 * batch * buckets, max(2 * batch * buckets + 1, 4000)))  # buckets of 2+ batches
    sampler = _data.BucketBatchSampler(_data.lengths_of(n, seed), batch, buckets=buckets, seed=seed)
    loader = DataLoader(range(n), batch_sampler=sampler)  # type: ignore[arg-type]
    verdicts = _judged(loader, sampler.set_epoch)  # what SetEpoch calls
    assert all(not v.issues for v in verdicts), (n, batch, buckets, [v.to_dict() for v in verdicts])


def test_the_same_samplers_replaying_are_issues() -> None:
    sampler = _data.LengthGroupedSampler(_data.lengths_of(1600), 8)
    verdicts = _judged(DataLoader(range(1600), batch_size=8, sampler=sampler), lambda epoch: None)  # type: ignore[arg-type]
    assert [f.code for f in verdicts[1].issues] == ["order_unchanged"]
    buckets = _data.BucketBatchSampler(_data.lengths_of(640), 8)
    verdicts = _judged(DataLoader(range(640), batch_sampler=buckets), lambda epoch: None)  # type: ignore[arg-type]
    assert [f.code for f in verdicts[1].issues] == ["order_unchanged"]
