"""The callback's contract: it never perturbs training, reports where it says, raises everywhere, resumes, bounds
its memory and rejects bad arguments clearly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from epochkit import ShuffleAudit, ShuffleAuditError, ShuffleAuditWarning
from epochkit.audit.recording import RecordingSampler
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit
from tests.helpers import quiet_trainer, read_tensorboard


def _weights_after_fit(audit: bool, num_workers: int, sampler: bool) -> dict[str, torch.Tensor]:
    pl.seed_everything(7, workers=True)
    dm = AuditDataModule(n=160, num_workers=num_workers, sampler=_data.with_replacement if sampler else None)
    # Dropout and the RandomSampler both draw from torch's global RNG, so any extra draw would show.
    trainer = fit([ShuffleAudit(on_issue="log", labels=1)] if audit else [], dm, max_epochs=2)
    return {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_with_the_audit_is_bit_identical_to_one_without(num_workers: int) -> None:
    for sampler in (False, True):
        without = _weights_after_fit(False, num_workers, sampler)
        with_audit = _weights_after_fit(True, num_workers, sampler)
        for key, value in without.items():
            assert torch.equal(value, with_audit[key]), (key, num_workers, sampler)


def test_the_loader_is_restored_after_fit() -> None:
    dm = AuditDataModule()
    trainer = fit([ShuffleAudit()], dm, max_epochs=1)
    loader = trainer.train_dataloader
    assert not isinstance(loader.batch_sampler, RecordingSampler)
    assert "process_dataloader" not in trainer.strategy.__dict__


def test_indices_are_recorded_with_workers_and_limit_train_batches() -> None:
    audit = ShuffleAudit(on_issue="raise")
    # Workers draw index batches ahead; only the 5 consumed batches count, and a partial epoch is no issue.
    fit([audit], AuditDataModule(num_workers=2), max_epochs=2, limit_train_batches=5)
    assert all(not v.findings for v in audit.verdicts_)
    assert audit.state_dict()["previous"]["train_dataloader"]["ids"].numel() == 5 * 16


def test_scalars_text_and_json_reach_the_logger_directory(tmp_path: Path) -> None:
    audit = ShuffleAudit(on_issue="log")
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit([audit], AuditDataModule(sampler=_data.fixed_permutation), max_epochs=2, logger=logger, log_every_n_steps=1)
    run = read_tensorboard(tmp_path / "tb")
    assert run.scalar_values("shuffle_audit/coverage") == [1.0, 1.0]
    assert run.scalar_values("shuffle_audit/spearman") == [pytest.approx(1.0)]
    assert run.scalar_values("shuffle_audit/issues") == [0.0, 1.0]
    reports = run.text_values("shuffle_audit/report")
    assert len(reports) == 3  # fit start, epochs 0 and 1
    assert "order_unchanged" in reports[-1] and "Spearman 1.000" in reports[-1]
    report = json.loads((Path(logger.log_dir) / "shuffle_audit.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]
    assert report["epochs"][1]["findings"][0]["code"] == "order_unchanged"
    assert report["config"]["train_dataloader"][0]["sampler"] == "FixedPermutationSampler"
    assert report["summary"] == "ShuffleAudit: 2 epochs audited, 1 issue: order_unchanged (epochs 1)."


def test_without_a_logger_each_fit_writes_its_own_report_under_default_root_dir(tmp_path: Path) -> None:
    for _ in range(2):
        fit([ShuffleAudit(on_issue="log")], AuditDataModule(), max_epochs=1, default_root_dir=tmp_path / "root")
    reports = sorted((tmp_path / "root" / "shuffle_audit").glob("version_*/shuffle_audit.json"))
    assert [p.parent.name for p in reports] == ["version_0", "version_1"]  # the second fit overwrote nothing
    assert json.loads(reports[1].read_text())["summary"].startswith("ShuffleAudit: 1 epoch audited, no issue")
    assert not list(Path.cwd().glob("shuffle_audit*"))  # nothing in the working directory


def test_warn_mode_warns_and_log_mode_logs(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.warns(
        ShuffleAuditWarning, match=r"order_unchanged .*Spearman 1\.000.*Fix: give FixedPermutation"
    ) as got:
        fit([ShuffleAudit()], AuditDataModule(sampler=_data.fixed_permutation), max_epochs=3)
    audit_warnings = [w for w in got if issubclass(w.category, ShuffleAuditWarning)]
    assert len(audit_warnings) == 1  # epochs 1 and 2 replay alike: warned once, both recorded
    assert Path(audit_warnings[0].filename).name == "_data.py"  # the user's trainer.fit line, not epochkit's
    with caplog.at_level(logging.INFO, logger="epochkit.audit"):
        fit([ShuffleAudit(on_issue="log")], AuditDataModule(sampler=_data.fixed_permutation), max_epochs=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "epochkit.audit"]
    assert any("order identical to epoch 0: Spearman 1.000" in m for m in messages)
    assert not any(m.startswith("ShuffleAudit: 2 epochs audited") for m in messages)  # Lightning's logger has it


def test_raise_mode_stops_at_the_end_of_the_epoch_where_the_issue_is_found() -> None:
    audit = ShuffleAudit(on_issue="raise")
    with pytest.raises(ShuffleAuditError, match=r"order identical to epoch 0: Spearman 1\.000") as info:
        fit([audit], AuditDataModule(sampler=_data.fixed_permutation), max_epochs=5)
    assert [f.code for f in info.value.findings] == ["order_unchanged"]
    assert [v.epoch for v in audit.verdicts_] == [0, 1]
    with pytest.raises(ShuffleAuditError, match="shuffle_off"):
        fit([ShuffleAudit(on_issue="raise")], AuditDataModule(shuffle=False))


def test_resume_keeps_the_previous_epoch_to_compare_with(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    dm = AuditDataModule(sampler=_data.fixed_permutation)
    fit([ShuffleAudit(on_issue="log"), ckpt], dm, max_epochs=1, enable_checkpointing=True)
    resumed = ShuffleAudit(on_issue="log")
    quiet_trainer(None, [resumed], max_epochs=2, limit_val_batches=0, enable_checkpointing=True).fit(
        _data.model(), datamodule=dm, ckpt_path=tmp_path / "last.ckpt"
    )
    # Epoch 1 ran only after the resume, yet it was compared with epoch 0 from the checkpoint.
    assert [v.epoch for v in resumed.verdicts_] == [0, 1]
    assert [f.code for f in resumed.verdicts_[1].findings] == ["order_unchanged"]


def test_max_samples_bounds_the_record_and_still_finds_the_bug() -> None:
    healthy = ShuffleAudit(on_issue="raise", max_samples=300)
    fit([healthy], AuditDataModule(n=2000, batch_size=50))
    kept = healthy.state_dict()["previous"]["train_dataloader"]["ids"].numel()
    assert 200 < kept < 400
    assert any("subsample" in note for note in healthy.verdicts_[0].notes)
    buggy = ShuffleAudit(on_issue="log", max_samples=300)
    fit([buggy], AuditDataModule(n=2000, batch_size=50, sampler=_data.fixed_permutation), max_epochs=2)
    assert [f.code for f in buggy.verdicts_[1].findings] == ["order_unchanged"]
    # Label runs are measured on every k-th whole batch: sorted data is still caught.
    sorted_data = ShuffleAudit(on_issue="log", max_samples=300, ignore=["shuffle_off"])
    fit([sorted_data], AuditDataModule(n=2000, batch_size=50, shuffle=False, sort_by_label=True), max_epochs=1)
    assert {f.code for f in sorted_data.verdicts_[0].findings} == {"sorted_labels", "class_blocked_batches"}


def test_sample_ids_from_the_batch_identify_an_iterable_stream() -> None:
    audit = ShuffleAudit(on_issue="log", sample_ids=lambda batch: batch[1] * 0 + batch[0][:, 0].argsort())
    fit([audit], AuditDataModule(kind="stream", num_workers=0), max_epochs=1)
    # The made-up ids repeat 0..15 in every batch: 192 samples, 16 distinct ids.
    assert [f.code for f in audit.verdicts_[0].findings] == ["iterable_replicated"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_issue": "stop"}, r"on_issue='stop'.*'warn', 'raise', 'log'"),
        ({"max_samples": 10}, r"max_samples=10.*int >= 100"),
        ({"ignore": ["order_changed"]}, r"unknown finding codes \['order_changed'\].*allowed: \["),
        ({"labels": 1.5}, r"labels=1.5.*sequence of labels"),
        ({"sample_ids": [1, 2]}, r"sample_ids=\[1, 2\].*batch key"),
        ({"ignore": "order_unchanged"}, r"ignore='order_unchanged'\): must be a sequence of finding codes, not a str"),
        ({"fingerprints": "no"}, r"fingerprints='no'\): must be True or False"),
        ({"labels": {"a": 1}}, r"labels=\{'a': 1\}.*sequence of labels"),
        ({"escalate": ["order_unchanged"]}, r"escalate=\['order_unchanged'\]\): unknown notice codes .*'weak_mixing'"),
        ({"escalate": "weak_mixing"}, r"escalate='weak_mixing'\): must be a sequence of finding codes, not a str"),
        ({"images": 1}, r"images=1\): must be one of True, False, 'plot', 'raw'"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_argument_value_and_allowed(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ShuffleAudit(**kwargs)


def test_a_labels_array_of_the_wrong_length_fails_at_fit_start_naming_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"labels=<10 labels>.*192 samples"):
        fit([ShuffleAudit(labels=list(range(10)))], AuditDataModule(), max_epochs=1)


def _plain_trainer(root: Path, callbacks: list[pl.Callback], max_epochs: int) -> pl.Trainer:
    """A quiet Trainer for tests that bring their own data."""
    return quiet_trainer(root, callbacks, max_epochs=max_epochs)


def test_a_labels_key_beyond_the_tensor_dataset_fails_at_fit_start_naming_the_keys(tmp_path: Path) -> None:
    from tests.helpers import RegressionDataModule, RegressionModule

    trainer = _plain_trainer(tmp_path, [ShuffleAudit(labels=5)], max_epochs=1)
    with pytest.raises(
        ValueError, match=r"labels=5\): the training TensorDataset has 2 tensors, so a batch has keys 0"
    ):
        trainer.fit(RegressionModule(), datamodule=RegressionDataModule())


def test_state_key_reflects_settings() -> None:
    assert ShuffleAudit().state_key != ShuffleAudit(max_samples=1000).state_key
    assert ShuffleAudit(on_issue="raise").state_key == ShuffleAudit().state_key


def test_the_loader_and_strategy_are_restored_when_fit_raises() -> None:
    dm = AuditDataModule(shuffle=False)
    trainer = quiet_trainer(None, [ShuffleAudit(on_issue="raise")], max_epochs=2, limit_val_batches=0)
    with pytest.raises(ShuffleAuditError):
        trainer.fit(_data.model(), datamodule=dm)
    assert not isinstance(trainer.train_dataloader.batch_sampler, RecordingSampler)
    assert "process_dataloader" not in trainer.strategy.__dict__


def test_a_fit_after_a_resumed_fit_starts_fresh(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    dm = AuditDataModule(n=64)
    fit([ShuffleAudit(on_issue="log"), ckpt], dm, max_epochs=2, enable_checkpointing=True)
    audit = ShuffleAudit(on_issue="log")
    fit([audit], dm, max_epochs=3, ckpt_path=tmp_path / "last.ckpt")
    assert [v.epoch for v in audit.verdicts_] == [0, 1, 2]
    fit([audit], AuditDataModule(n=64, seed=1), max_epochs=2)  # the same instance, a new fit
    assert [v.epoch for v in audit.verdicts_] == [0, 1]


def test_fingerprint_multipliers_live_for_one_fit_not_for_the_process() -> None:
    """The fingerprint's per-width multiplier tables (device tensors) belong to the fit's audit, not to a module-level
    cache that would hold device memory until the process exits."""
    from epochkit.audit import recording

    audit = ShuffleAudit(on_issue="log")
    during: list[int] = []

    class Probe(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            during.append(len(audit._fingerprint_tables_))

    fit([audit, Probe()], AuditDataModule(kind="stream", num_workers=0), max_epochs=1)
    assert during and during[0] > 0  # the stream has no sampler indices nor ids: fingerprinted, tables kept
    assert audit._fingerprint_tables_ == {}  # released at teardown
    assert not [
        name
        for name, value in vars(recording).items()
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())
    ]
