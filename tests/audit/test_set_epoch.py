"""SetEpoch on real fits: it reaches what Lightning does not (an IterableDataset, a batch sampler), exactly once per
epoch and before the epoch's iterator, in workers, after a reload and a resume (at an epoch end and mid-epoch), on 2
DDP ranks; and it says when it cannot help (persistent workers) or has nothing to do."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import BatchSampler, Dataset, SequentialSampler

from epochkit import SetEpoch, ShuffleAudit
from tests.audit import _data, _streams
from tests.audit._data import AuditDataModule, fit
from tests.helpers import fit_ddp


def _issues(audit: ShuffleAudit) -> list[str]:
    return [f.code for v in audit.verdicts_ for f in v.issues]


def test_a_user_stream_gets_its_epoch_exactly_once_per_epoch_before_its_iterator() -> None:
    dm = AuditDataModule(kind="epoch_stream", n=96)
    audit = ShuffleAudit(on_issue="raise")
    fit([audit, SetEpoch()], dm, max_epochs=3)
    assert dm.train_set.set_calls == [0, 1, 2]
    assert dm.train_set.started == [0, 1, 2]
    assert not _issues(audit)
    # The same with a loader rebuilt every epoch: Lightning reaches it twice per epoch (prepare, epoch start).
    dm = AuditDataModule(kind="epoch_stream", n=96)
    fit([SetEpoch()], dm, max_epochs=3, reload_dataloaders_every_n_epochs=1)
    assert dm.train_set.set_calls == [0, 1, 2]


def test_without_set_epoch_the_user_stream_replays_and_the_audit_names_the_fix() -> None:
    dm = AuditDataModule(kind="epoch_stream", n=96)
    audit = ShuffleAudit(on_issue="log")
    fit([audit], dm, max_epochs=2)
    assert dm.train_set.set_calls == [] and dm.train_set.started == [0, 0]
    finding = audit.verdicts_[1].issues[0]
    assert finding.code == "order_unchanged"
    assert finding.fix == (
        "Lightning never calls set_epoch on an IterableDataset: add epochkit.SetEpoch() to the Trainer's callbacks, "
        "which calls EpochStream.set_epoch(epoch) before every epoch"
    )


def test_workers_see_the_epoch_and_persistent_workers_are_warned_about() -> None:
    # Workers start after the call and copy the updated data set: every epoch is a fresh order.
    audit = ShuffleAudit(on_issue="raise")
    fit([audit, SetEpoch()], AuditDataModule(kind="epoch_stream", n=96, num_workers=2), max_epochs=2)
    assert not _issues(audit)
    # Persistent workers keep their first copy: SetEpoch says so, and the audit sees the replay with that fix.
    audit = ShuffleAudit(on_issue="log")
    dm = AuditDataModule(kind="epoch_stream", n=96, num_workers=2, persistent_workers=True)
    with pytest.warns(UserWarning, match=r"persistent_workers=True, so its 2 workers keep the copy of EpochStream"):
        fit([audit, SetEpoch()], dm, max_epochs=2)
    assert {f.code for f in audit.fit_start_.issues} == {"persistent_workers_set_epoch"}
    assert audit.verdicts_[1].issues[0].fix.startswith("persistent workers keep the copy of the EpochStream")


def test_a_bucketing_batch_sampler_replays_without_set_epoch_and_the_fix_says_why() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(n=192, batch_sampler=_data.bucketed), max_epochs=2)
    finding = audit.verdicts_[1].issues[0]
    assert finding.code == "order_unchanged" and "order identical to epoch 0" in finding.evidence
    assert finding.fix == (
        "Lightning calls set_epoch on loader.sampler and loader.batch_sampler.sampler but never on the batch sampler "
        "itself: add epochkit.SetEpoch() to the Trainer's callbacks, which calls BucketBatchSampler.set_epoch(epoch) "
        "every epoch"
    )
    fixed = ShuffleAudit(on_issue="raise")
    trainer = fit([fixed, SetEpoch()], AuditDataModule(n=192, batch_sampler=_data.bucketed), max_epochs=3)
    assert trainer.train_dataloader.batch_sampler.set_calls == [0, 1, 2]
    assert not _issues(fixed)


class ShuffledBatches(BatchSampler):
    """A bucketing-style batch sampler that subclasses torch's ``BatchSampler``: fixed batches over the data in order,
    the batches in an order drawn from its own ``set_epoch``, which Lightning never calls on a batch sampler."""

    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__(SequentialSampler(range(n)), batch_size, drop_last=False)
        self.epoch = 0
        self.set_calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.set_calls.append(epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(super().__iter__())
        gen = torch.Generator().manual_seed(self.epoch)
        return iter([batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()])


def _shuffled_batches(n: int, dataset: Dataset, batch_size: int) -> ShuffledBatches:
    return ShuffledBatches(n, batch_size)


def test_a_batch_sampler_subclass_with_set_epoch_gets_its_epoch() -> None:
    # A subclass of BatchSampler is a custom batch sampler all the same: only torch's own BatchSampler (whose epoch
    # lives in its .sampler, which Lightning reaches) is left alone.
    audit = ShuffleAudit(on_issue="log")
    trainer = fit([audit, SetEpoch()], AuditDataModule(n=96, batch_sampler=_shuffled_batches), max_epochs=3)
    assert trainer.train_dataloader.batch_sampler.set_calls == [0, 1, 2]
    assert not _issues(audit)


def _epochs_started(tmp_path: Path, max_epochs: int, ckpt: Path | None = None, **kw: object) -> list[int]:
    dm = AuditDataModule(kind="epoch_stream", n=96)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, **kw)  # type: ignore[arg-type]
    fit([SetEpoch(), checkpoint], dm, ckpt_path=ckpt, max_epochs=max_epochs, enable_checkpointing=True)
    return dm.train_set.started


def test_a_resumed_fit_reads_the_epoch_it_resumes(tmp_path: Path) -> None:
    assert _epochs_started(tmp_path / "full", 4) == [0, 1, 2, 3]
    assert _epochs_started(tmp_path / "a", 2) == [0, 1]
    assert _epochs_started(tmp_path / "a", 4, ckpt=tmp_path / "a" / "ckpt" / "last.ckpt") == [2, 3]
    # Mid-epoch: Lightning restarts epoch 1 without calling on_train_epoch_start; the epoch is set all the same.
    steps = tmp_path / "b"
    dm = AuditDataModule(kind="epoch_stream", n=96)  # 6 steps an epoch: step 9 is in the middle of epoch 1
    checkpoint = ModelCheckpoint(dirpath=steps / "ckpt", every_n_train_steps=3, save_last=True)
    fit([SetEpoch(), checkpoint], dm, max_steps=9, max_epochs=3, enable_checkpointing=True)
    resumed = AuditDataModule(kind="epoch_stream", n=96)
    trainer = fit([SetEpoch()], resumed, ckpt_path=steps / "ckpt" / "last.ckpt", max_epochs=3)
    assert resumed.train_set.started == [1, 2], (resumed.train_set.started, trainer.global_step)


def test_wrapped_data_sets_are_reached_and_what_lightning_calls_is_left_to_it() -> None:
    from torch.utils.data import ConcatDataset, DataLoader, Subset

    from epochkit.audit.set_epoch import epoch_targets

    x, y = _data.make_tensors(32, 4, 0)
    inner = [_data.EpochAwareSet(x, y), _data.EpochAwareSet(x, y)]
    wrapped = DataLoader(ConcatDataset([Subset(inner[0], range(8)), inner[1]]), batch_size=4)
    assert [obj for _, obj in epoch_targets(wrapped)] == inner
    sampler = _data.RotatingSampler(32)  # has set_epoch, and Lightning calls it: not SetEpoch's business
    assert epoch_targets(DataLoader(_data.LabelledSet(x, y), batch_size=4, sampler=sampler)) == []


def test_nothing_to_do_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="epochkit.audit"):
        fit([SetEpoch()], AuditDataModule(), max_epochs=2)
    assert sum("SetEpoch: no train data set or batch sampler" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.ddp
def test_an_hf_stream_on_2_ranks_split_by_node_with_set_epoch_is_quiet(tmp_path: Path) -> None:
    audit = ShuffleAudit(on_issue="raise", sample_ids="idx")
    dm = _streams.HFStream(n=192, shards=4, buffer=32, split=True)
    reports = fit_ddp(_streams.model(), dm, tmp_path, [audit, SetEpoch()], max_epochs=2, limit_val_batches=0)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    state = reports[0].callback_states[audit.state_key]
    assert not state["fit_start"]["findings"]
    for verdict in state["verdicts"]:
        assert not [f for f in verdict["findings"] if f["severity"] == "issue"], verdict
        assert verdict["metrics"]["rank_overlap"] == 0.0
    assert state["verdicts"][1]["metrics"]["successors_preserved"] < 0.2  # each rank's order changed


def test_set_epoch_records_what_it_set() -> None:
    callback = SetEpoch()
    assert isinstance(callback, pl.Callback) and callback.state_dict() == {"epochs": {}}
    fit([callback], AuditDataModule(kind="epoch_stream", n=64), max_epochs=2)
    assert callback.state_dict() == {"epochs": {"dataset:EpochStream": 1}}
