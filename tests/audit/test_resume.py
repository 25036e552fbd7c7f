"""A resumed fit, judged whole (issue 21): the audit leaves what a resume trains unchanged for every loader, judges the
cut epoch's parts before and after the checkpoint together, reports a replay as ``resume_replayed`` with the cause's
fix, never on a correct resume, and ``SetEpoch`` makes the ``DistributedSampler`` resumes right."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from epochkit import SetEpoch, ShuffleAudit
from epochkit.testing import ResumeReport, resume_drill
from tests.audit._resume import ResumeData
from tests.helpers import RegressionModule, quiet_trainer

#: 8 batches an epoch: step 11 cuts epoch 1 after its 3rd batch.
KILL = 11


def drill(
    kind: str, callbacks: Callable[[], Sequence[Callback]] | None = None, workers: int = 0, **kwargs: Any
) -> ResumeReport:
    settings = {"max_epochs": 3, "use_distributed_sampler": False, "limit_val_batches": 1, **kwargs}
    return resume_drill(
        RegressionModule, lambda: ResumeData(kind, workers), KILL, trainer_kwargs=settings, make_callbacks=callbacks
    )


class Audits:
    """``make_callbacks`` for the drill that keeps every ShuffleAudit it made (the last one is the resumed fit's)."""

    def __init__(self, set_epoch: bool = False) -> None:
        self.set_epoch = set_epoch
        self.made: list[ShuffleAudit] = []

    def __call__(self) -> list[Callback]:
        self.made.append(ShuffleAudit(on_issue="log", images=False))
        return [self.made[-1], SetEpoch()] if self.set_epoch else [self.made[-1]]

    def resumed_findings(self, epoch: int) -> list[Any]:
        return next(v for v in self.made[-1].verdicts_ if v.epoch == epoch).findings


@pytest.mark.parametrize(
    ("kind", "reload", "workers"),
    [
        ("torchdata_random", 0, 0),
        ("torchdata_random", 1, 0),
        ("torchdata_random", 0, 2),
        ("torch_random_generator", 0, 0),
        ("distributed", 0, 0),
        ("distributed", 1, 0),
        ("batch_sampler", 0, 0),
    ],
)
def test_the_audit_leaves_what_a_resume_trains_unchanged(kind: str, reload: int, workers: int) -> None:
    plain = drill(kind, None, workers, reload_dataloaders_every_n_epochs=reload)
    audited = drill(kind, Audits(), workers, reload_dataloaders_every_n_epochs=reload)
    assert audited.resumed.data == plain.resumed.data
    assert audited.resumed.steps == plain.resumed.steps
    for name, weights in plain.resumed.weights.items():
        assert torch.equal(audited.resumed.weights[name], weights)
    if kind in ("torchdata_random", "batch_sampler"):  # an exact resume: the audit saw exactly what was trained
        assert audited.resumed.digests == audited.uninterrupted.digests
    if kind != "distributed":  # SetEpoch has nothing to correct here, so it changes nothing either
        with_set_epoch = drill(kind, Audits(set_epoch=True), workers, reload_dataloaders_every_n_epochs=reload)
        assert with_set_epoch.resumed.data == plain.resumed.data


@pytest.mark.parametrize("kind", ["torchdata_random", "batch_sampler"])
def test_a_correct_resume_is_exact_and_never_flagged(kind: str) -> None:
    audits = Audits(set_epoch=True)
    report = drill(kind, audits)
    assert report.exact, str(report)
    # the cut epoch judged whole: its order digest is the uninterrupted epoch's
    assert report.resumed.digests == report.uninterrupted.digests
    assert len(report.resumed.digests) == 3
    assert [f for v in audits.made[-1].verdicts_ for f in v.findings] == []


def test_the_mid_epoch_replay_is_reported_with_counts_and_its_cause(tmp_path: Path) -> None:
    # StatefulDataLoader over a DistributedSampler: Lightning restores the loader before sampler.set_epoch, so the
    # rest of epoch 1 is drawn from epoch 0's permutation.
    audits = Audits()
    report = drill("distributed", audits)
    assert not report.exact
    assert report.differences[0].startswith("consumed data: the batch at step 12 (epoch 1, batch 3), after the resume")
    (finding,) = audits.resumed_findings(1)
    assert finding.code == "resume_replayed"
    assert "18 of 48 samples presented before the cut" in finding.evidence
    assert "seen twice" in finding.evidence and "never seen this epoch" in finding.evidence
    assert "epoch 0's order from the cut on" in finding.evidence
    assert "epochkit.SetEpoch()" in finding.fix and "#21938" in finding.fix
    assert audits.resumed_findings(2) == []  # epoch 2 is right again


def test_set_epoch_makes_the_distributed_sampler_resume_exact() -> None:
    audits = Audits(set_epoch=True)
    report = drill("distributed", audits)
    assert report.exact, str(report)
    assert [f for v in audits.made[-1].verdicts_ for f in v.findings] == []


@pytest.mark.parametrize(
    ("kind", "cause", "follows"),
    [
        # Lightning restarts a plain DataLoader's epoch: seeded alike, the fresh pass is epoch 0's order again
        ("plain", "cannot restore a plain DataLoader's position", "epoch 0's order from its start"),
        ("torch_random_generator", "torch.Generator is not in the checkpoint", "epoch 0's order from the cut on"),
    ],
)
def test_each_cause_gets_its_fix(kind: str, cause: str, follows: str) -> None:
    audits = Audits()
    drill(kind, audits)
    codes = [f.code for f in audits.resumed_findings(1)]
    assert codes == ["resume_replayed"], codes
    assert cause in audits.resumed_findings(1)[0].fix
    assert follows in audits.resumed_findings(1)[0].evidence


def test_the_cut_epoch_travels_in_the_checkpoint_compactly(tmp_path: Path) -> None:
    audits = Audits()
    resume_drill(
        RegressionModule,
        lambda: ResumeData("torchdata_random"),
        KILL,
        trainer_kwargs={"max_epochs": 2, "limit_val_batches": 1},
        make_callbacks=audits,
        root=tmp_path,
    )
    state = torch.load(tmp_path / "drill.ckpt", weights_only=True)["callbacks"][audits.made[0].state_key]
    partial = state["partial"]["train_dataloader"]
    assert partial["epoch"] == 1
    assert partial["ids"].dtype == torch.int32 and partial["ids"].numel() == 18  # 3 batches of 6: 4 bytes a sample
    assert partial["sizes"].tolist() == [6, 6, 6]
    assert len(set(partial["ids"].tolist())) == 18


def _epoch_end_fit(root: Path, epochs: int, callbacks: list[Callback], resume: bool) -> None:
    trainer = quiet_trainer(
        root,
        [*callbacks, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        max_epochs=epochs,
        enable_checkpointing=True,
        use_distributed_sampler=False,
        limit_val_batches=1,
    )
    trainer.fit(
        RegressionModule(),
        datamodule=ResumeData("plain_distributed", workers=2),
        ckpt_path=root / "ckpt" / "last.ckpt" if resume else None,
    )


@pytest.mark.parametrize("set_epoch", [False, True])
def test_an_epoch_end_resume_that_replays_epoch_0_is_named(tmp_path: Path, set_epoch: bool) -> None:
    # Lightning #21938: resumed from an end-of-epoch checkpoint with workers, the first resumed epoch is drawn with
    # the sampler's epoch-0 permutation.
    audits = Audits(set_epoch)
    _epoch_end_fit(tmp_path, 2, audits(), resume=False)
    _epoch_end_fit(tmp_path, 3, audits(), resume=True)
    findings = audits.resumed_findings(2)
    digests = {v.epoch: v.digests["train_dataloader"]["merged"] for v in audits.made[-1].verdicts_}
    uninterrupted = Audits(set_epoch)
    _epoch_end_fit(tmp_path / "straight", 3, uninterrupted(), resume=False)
    straight = {v.epoch: v.digests["train_dataloader"]["merged"] for v in uninterrupted.made[-1].verdicts_}
    if set_epoch:  # SetEpoch gives the sampler its epoch before the iterator starts: the uninterrupted orders
        assert findings == []
        assert digests == straight
    else:
        assert digests[2] == digests[0] != straight[2]
        assert [f.code for f in findings] == ["resume_replayed"]
        assert "the fit resumed at epoch 2 and epoch 2 presented exactly the order of epoch 0" in findings[0].evidence
        assert "epochkit.SetEpoch()" in findings[0].fix


def test_a_litdata_streaming_loader_resumes_the_same_with_the_audit(tmp_path: Path) -> None:
    from tests.audit import _streams

    path = _streams.optimize_litdata(tmp_path, n=96, chunk_size=16)

    def run(callbacks: Callable[[], Sequence[Callback]] | None) -> ResumeReport:
        return resume_drill(
            _streams.model,
            lambda: _streams.LitStream(path, str(tmp_path / "cache"), batch_size=12),
            KILL,
            trainer_kwargs={"max_epochs": 2, "limit_val_batches": 0},
            make_callbacks=callbacks,
        )

    plain = run(None)
    audited = run(lambda: [ShuffleAudit(on_issue="log", sample_ids="idx", images=False), SetEpoch()])
    assert audited.resumed.data == plain.resumed.data
    assert audited.resumed.steps == plain.resumed.steps == plain.uninterrupted.steps
