"""A mid-epoch resume under DDP (issue 21): 2 ``ddp_spawn`` processes on the CPU, Lightning's own ``DistributedSampler``
in a ``StatefulDataLoader``, a ``ModelCheckpoint(every_n_train_steps=...)`` checkpoint in the middle of epoch 1. Every
rank's part of the cut epoch travels in the checkpoint, so the audit judges the cut epoch whole after the resume."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from epochkit import SetEpoch, ShuffleAudit
from epochkit.audit.digests import order_digest
from tests.audit._resume import ResumeData
from tests.helpers import RankReport, RegressionModule, fit_ddp, quiet_trainer

pytestmark = pytest.mark.ddp  # every test here starts DDP processes

#: 48 samples, batches of 6 over 2 ranks: 4 steps an epoch; step 6 cuts epoch 1 after 2 batches on each rank.
CUT = 6
EPOCHS = 3


class Consumed(Callback):
    """What each step of this rank trained on: the epoch and the first feature of each sample (one per sample: the
    features are seeded Gaussians). A test tool: its ``state_dict`` only reports (nothing is loaded back)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[float]]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.seen.append((trainer.current_epoch, batch[0][:, 0].tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {"seen": list(self.seen)}


def _fit(root: Path, callbacks: Sequence[Callback], ckpt: Path | None = None, cut: bool = False) -> list[RankReport]:
    pl.seed_everything(0, verbose=False)  # the same initial weights in every fit
    kwargs: dict[str, Any] = {"max_epochs": EPOCHS, "limit_val_batches": 0, "use_distributed_sampler": False}
    extra: list[Callback] = [Consumed()]
    if cut:  # a preempted job: its last checkpoint is mid-epoch
        extra.append(ModelCheckpoint(dirpath=root / "ckpt", filename="cut", every_n_train_steps=CUT, save_top_k=-1))
        kwargs.update(max_steps=CUT, enable_checkpointing=True)
    data = ResumeData("ddp_distributed")
    reports = fit_ddp(RegressionModule(), data, root, [*callbacks, *extra], ckpt_path=ckpt, **kwargs)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    return reports


def _seen(reports: list[RankReport]) -> list[list[tuple[int, list[float]]]]:
    return [r.callback_states["Consumed"]["seen"] for r in reports]


def _digest(seen: list[tuple[int, list[float]]], epoch: int) -> str:
    """The order digest the audit gives a rank's epoch, from what the rank trained on (sample ids by feature)."""
    data = ResumeData("ddp_distributed")
    data.setup("fit")
    index = {x: i for i, x in enumerate(data.train_set.tensors[0][:, 0].tolist())}
    batches = [[index[x] for x in batch] for e, batch in seen if e == epoch]
    return order_digest(np.array([i for b in batches for i in b]), np.array([len(b) for b in batches]))


def _audit() -> ShuffleAudit:
    return ShuffleAudit(on_issue="log", images=False)


def _verdicts(reports: list[RankReport]) -> dict[int, dict[str, Any]]:
    states = [r.callback_states[_audit().state_key] for r in reports]
    assert states[0]["verdicts"] == states[1]["verdicts"]  # one decision, broadcast from rank 0
    return {v["epoch"]: v for v in states[0]["verdicts"] if v["epoch"] is not None}


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[RankReport], Path]:
    """The uninterrupted fit without epochkit, and the checkpoint of the fit with ``ShuffleAudit`` and ``SetEpoch``
    preempted in the middle of epoch 1: a ``StatefulDataLoader`` over a ``DistributedSampler`` on 2 ranks."""
    root = tmp_path_factory.mktemp("ddp_resume")
    straight = _fit(root / "straight", [])
    cut = _fit(root / "cut", [_audit(), SetEpoch()], cut=True)
    assert _seen(cut) == [seen[:CUT] for seen in _seen(straight)]  # the same data up to the cut
    return straight, root / "cut" / "ckpt" / "cut.ckpt"


def test_every_ranks_part_of_the_cut_epoch_travels_in_the_checkpoint(fits: tuple[list[RankReport], Path]) -> None:
    # Lightning writes rank 0's callback state only: the audit gathered every rank's part into it, by rank
    state = torch.load(fits[1], weights_only=True)["callbacks"][_audit().state_key]
    assert state["partial_world"] == 2 and sorted(state["partial_ranks"]) == [0, 1]
    parts = [state["partial_ranks"][rank]["train_dataloader"] for rank in (0, 1)]
    assert [(p["epoch"], p["ids"].dtype, p["sizes"].tolist()) for p in parts] == [(1, torch.int32, [6, 6])] * 2
    assert len({*parts[0]["ids"].tolist(), *parts[1]["ids"].tolist()}) == 24  # the ranks' disjoint shards


def test_a_ddp_resume_with_set_epoch_is_judged_whole_and_equals_the_uninterrupted_fit(
    fits: tuple[list[RankReport], Path], tmp_path: Path
) -> None:
    straight, checkpoint = fits
    resumed = _fit(tmp_path, [_audit(), SetEpoch()], ckpt=checkpoint)
    # the rest of the fit trains exactly what the uninterrupted fit without epochkit trains, on each rank, to the same
    # weights
    assert _seen(resumed) == [seen[CUT:] for seen in _seen(straight)]
    for name, weights in straight[0].model_state.items():
        assert torch.equal(resumed[0].model_state[name], weights), name
    # the audit joined each rank's parts: the cut epoch is whole (the part after the resume alone covers half), and
    # no finding in any epoch
    judged = _verdicts(resumed)
    assert sorted(judged) == list(range(EPOCHS))
    # each rank's order digest of the cut epoch is that of the uninterrupted rank's whole epoch 1
    assert judged[1]["digests"]["train_dataloader"]["ranks"] == [_digest(seen, epoch=1) for seen in _seen(straight)]
    assert judged[1]["metrics"]["coverage"] == 1.0 and judged[1]["metrics"]["duplicates"] == 0.0
    assert judged[1]["metrics"]["rank_overlap"] == 0.0
    assert [f for v in judged.values() for f in v["findings"]] == []


def test_a_ddp_mid_epoch_replay_is_reported_with_counts_not_as_the_samplers_seeding(
    fits: tuple[list[RankReport], Path], tmp_path: Path
) -> None:
    # Without SetEpoch, Lightning restores each rank's loader and starts its iterator before sampler.set_epoch: the
    # rest of epoch 1 is drawn from each rank's shard of epoch 0's permutation.
    resumed = _fit(tmp_path, [_audit()], ckpt=fits[1])
    epoch1 = _verdicts(resumed)[1]
    assert [f["code"] for f in epoch1["findings"]] == ["resume_replayed"]
    (finding,) = epoch1["findings"]
    assert "after the mid-epoch resume on 2 ranks (24 of 48 samples presented before the cut)" in finding["evidence"]
    twice = int(finding["evidence"].split("), ")[1].split(" of the 24 samples")[0])
    assert 0 < twice <= 24 and f"{twice} of the data set's 48 samples were never seen this epoch" in finding["evidence"]
    assert "epochkit.SetEpoch()" in finding["fix"] and "#21938" in finding["fix"]
    # what the replay causes across ranks (a sample of one rank's part before the cut replayed on the other) is a
    # note under it, not a finding of its own with the wrong fix
    assert [n for n in epoch1["notes"] if n.startswith("rank_overlap (explained by resume_replayed)")]
    assert _verdicts(resumed)[2]["findings"] == []  # epoch 2 is right again


def test_a_ddp_checkpoint_resumed_on_one_process_skips_the_cut_epoch_with_a_notice(
    fits: tuple[list[RankReport], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = _audit()
    trainer = quiet_trainer(tmp_path, [audit, SetEpoch()], max_epochs=EPOCHS, limit_val_batches=0,
                            use_distributed_sampler=False)  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer.fit(RegressionModule(), datamodule=ResumeData("distributed"), ckpt_path=fits[1])
    assert "this fit resumed in the middle of epoch 1, and the checkpoint holds the part before the cut of 2" in (
        caplog.text
    )
    epoch1 = next(v for v in audit.verdicts_ if v.epoch == 1)
    assert epoch1.findings == []  # the part after the resume alone covers half the data: no false alarm
    assert any(note.startswith("epoch 1 not judged") for note in epoch1.notes)
