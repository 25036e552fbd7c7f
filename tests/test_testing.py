"""``epochkit.testing.resume_drill``: exact on the demo model with every epochkit callback attached, and the first
difference named for each planted fault (a callback without state_dict, a loader whose generator is not saved, the
DistributedSampler replay)."""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch import Callback

from epochkit import EarlyStopping, LRWarmup, SetEpoch, ShuffleAudit
from epochkit.demo import DigitsClassifier
from epochkit.testing import resume_drill
from tests.audit._resume import ResumeData, StatefulDigits
from tests.helpers import RegressionModule

SETTINGS = {"max_epochs": 3, "use_distributed_sampler": False, "limit_val_batches": 1}


def every_callback() -> list[Callback]:
    return [
        ShuffleAudit(on_issue="raise", images=False),
        SetEpoch(),
        EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
        LRWarmup(steps=10),
    ]


def test_the_demo_model_resumes_exactly_with_every_callback() -> None:
    report = resume_drill(
        lambda: DigitsClassifier(dropout=0.0),  # Lightning's checkpoint does not hold the RNG that dropout draws from
        StatefulDigits,
        kill_at_step=16,  # epoch 1, after its 4th batch of 12
        trainer_kwargs={"max_epochs": 3},
        make_callbacks=every_callback,
    )
    assert report.exact, str(report)
    assert str(report).splitlines()[0].endswith("exact; the resumed fit trained what the uninterrupted one did")
    assert report.steps == 36 and len(report.resumed.lrs) == 36
    assert sorted(report.resumed.digests) == [0, 1, 2]
    assert any(key.startswith("EarlyStopping") for key in report.resumed.callbacks)


class DecayWithoutState(Callback):
    """A planted fault: an LR decay whose step count is not in the checkpoint (no state_dict)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.steps += 1
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = 0.05 * 0.9**self.steps


def test_a_callback_without_state_dict_is_named_by_the_learning_rate() -> None:
    report = resume_drill(
        RegressionModule,
        lambda: ResumeData("torchdata_random"),
        11,
        SETTINGS,
        make_callbacks=lambda: [DecayWithoutState()],
    )
    assert not report.exact
    assert report.differences[0].startswith("learning rate: optimizer step 12 used")
    assert "first difference: learning rate: optimizer step 12" in str(report)
    assert any(d.startswith("final weights") for d in report.differences)


@pytest.mark.parametrize("kind", ["torch_random_generator", "distributed"])
def test_a_lost_generator_and_the_replay_are_named_by_the_data(kind: str) -> None:
    report = resume_drill(RegressionModule, lambda: ResumeData(kind), 11, SETTINGS)
    assert not report.exact
    assert report.differences[0].startswith("consumed data: the batch at step 12 (epoch 1, batch 3), after the resume")
    assert "final weights" in str(report)


def test_the_global_rng_counts_only_when_strict() -> None:
    loose = resume_drill(RegressionModule, lambda: ResumeData("torchdata_random"), 11, SETTINGS)
    assert loose.exact and any("global RNG state" in note for note in loose.notes)
    strict = resume_drill(RegressionModule, lambda: ResumeData("torchdata_random"), 11, SETTINGS, strict=True)
    assert not strict.exact and strict.differences[0].startswith("global RNG state")


@pytest.mark.parametrize(("step", "message"), [(0, "kill_at_step=0"), (24, "must be below the fit's 24")])
def test_a_kill_step_outside_the_fit_is_refused(step: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resume_drill(RegressionModule, lambda: ResumeData("torchdata_random"), step, SETTINGS)


@pytest.mark.processes
def test_a_real_sigkill_resume_is_exact() -> None:
    # The child process runs the fit and kills itself with SIGKILL right after the checkpoint; picklable factories.
    report = resume_drill(
        RegressionModule,
        functools.partial(ResumeData, "torchdata_random"),
        11,
        SETTINGS,
        make_callbacks=functools.partial(every_callback),
        kill="sigkill",
    )
    assert report.exact, str(report)
    assert report.resumed.data == report.uninterrupted.data and len(report.resumed.data) == 24


def test_sigkill_needs_picklable_factories() -> None:
    with pytest.raises(TypeError, match=r"kill='sigkill'.*picklable"):
        resume_drill(RegressionModule, lambda: ResumeData("torchdata_random"), 11, SETTINGS, kill="sigkill")
