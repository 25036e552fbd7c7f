"""InitAudit in real fits: non-perturbation, dead units, on_issue, TensorBoard and the console, resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from epochkit import InitAudit, InitAuditError, InitAuditWarning
from tests.helpers import quiet_trainer, read_tensorboard
from tests.init_audit.zoo import Classify, default_mlp, loader, mlp, zero_head, zero_mlp_tanh


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


def _fit_with_dropout(root: Path, callbacks: list[Callback]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    pl.seed_everything(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    model = Classify(net, adam=True, lr=1e-2)
    trainer = quiet_trainer(root, callbacks, max_epochs=2, deterministic=True)
    trainer.fit(model, loader(shuffle=True))  # a shuffling loader and dropout both draw from the global RNG
    assert _hooks(model) == 0
    return {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()


def test_the_audit_changes_no_weight_and_draws_no_random_number(tmp_path: Path) -> None:
    audit = InitAudit(steps=3)
    with_audit, rng_with = _fit_with_dropout(tmp_path / "with", [audit])
    without, rng_without = _fit_with_dropout(tmp_path / "without", [])
    assert audit.symmetry_done_ and audit.dead_done_ and audit.steps_judged == 3
    assert with_audit.keys() == without.keys()
    assert all(torch.equal(with_audit[k], without[k]) for k in without)
    assert torch.equal(rng_with, rng_without)


class HookCount(Callback):
    """How many forward hooks the module holds at the start of each epoch and in its first batch."""

    def __init__(self) -> None:
        self.at_epoch_start: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if i == 0:
            self.at_epoch_start.append(_hooks(pl_module))


def test_a_dead_layer_is_an_issue_at_the_end_of_the_first_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = mlp(nn.ReLU)
    nn.init.constant_(net[0].bias, -100.0)  # no unit of net.0 is ever positive
    trainer = quiet_trainer(tmp_path, [InitAudit(on_issue="raise")], max_epochs=3)
    with pytest.raises(InitAuditError) as caught:
        trainer.fit(Classify(net), loader())
    assert trainer.current_epoch == 0
    dead = [(f.code, f.layer, f.evidence) for f in caught.value.findings]
    assert dead == [("dead_layer", "net.0", "32 of 32 units (100.0%) never positive in epoch 0")]
    assert _hooks(net) == 0  # removed although the fit failed


def test_some_dead_units_are_a_notice_with_their_fraction_and_the_hooks_last_one_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = mlp(nn.ReLU)
    with torch.no_grad():
        net[0].bias[:8] = -100.0
    audit, count = InitAudit(on_issue="raise"), HookCount()
    quiet_trainer(tmp_path, [audit, count], max_epochs=2).fit(Classify(net), loader())
    assert count.at_epoch_start == [2, 0]  # one hook per ReLU in epoch 0, none after
    assert audit.issues == []
    notices = [(f.code, f.layer) for f in audit.findings_]
    assert ("dead_units", "net.0") in notices
    assert audit.dead_fraction_["net.0"] == 0.25


class HookTrace(Callback):
    """How many forward hooks the module holds after each training batch of the first epoch."""

    def __init__(self) -> None:
        self.after_batch: list[int] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.current_epoch == 0:
            self.after_batch.append(_hooks(pl_module))


def test_hooks_go_at_step_steps_once_every_unit_was_positive_and_stay_while_one_was_not(tmp_path: Path) -> None:
    # Positivity only grows: once every hooked unit was positive, no unit can be dead, whatever the epoch brings.
    runs = {}
    for name in ("alive", "dead"):
        torch.manual_seed(0)
        net = mlp(nn.ReLU)
        with torch.no_grad():
            net[0].bias.add_(5.0)
            net[2].weight.abs_()  # positive inputs, positive weights: every unit positive from the first batch on
            if name == "dead":
                net[0].bias[:8] = -100.0  # a quarter of net.0 never positive
        audit, trace = InitAudit(steps=2), HookTrace()  # trace runs after the audit: it sees what the audit left
        quiet_trainer(tmp_path / name, [audit, trace], max_epochs=1).fit(Classify(net), loader())
        runs[name] = (trace.after_batch, audit.dead_fraction_)
    batches = len(runs["alive"][0])
    assert batches > 3
    assert runs["alive"] == ([2, 0] + [0] * (batches - 2), {"net.0": 0.0, "net.2": 0.0})
    assert runs["dead"] == ([2] * batches, {"net.0": 0.25, "net.2": 0.0})  # hooks to the end of the epoch


def test_warn_and_log_report_each_issue_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.warns(InitAuditWarning, match=r"symmetric_units in 'net.0'") as warned:
        quiet_trainer(tmp_path / "w", [InitAudit()], max_epochs=2).fit(Classify(zero_mlp_tanh()), loader())
    # net.0, net.2 and the output layer: balanced batches give its zero bias no gradient, so it stays zero too.
    assert len([w for w in warned if issubclass(w.category, InitAuditWarning)]) == 3
    with caplog.at_level(logging.WARNING, logger="epochkit.init_audit"):
        quiet_trainer(tmp_path / "l", [InitAudit(on_issue="log")], max_epochs=1).fit(
            Classify(zero_mlp_tanh()), loader()
        )
    mine = [r for r in caplog.records if r.name == "epochkit.init_audit" and r.levelno == logging.WARNING]
    assert sum("symmetric_units" in r.getMessage() for r in mine) == 3


def test_tensorboard_gets_the_groups_the_dead_fraction_and_a_report(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    audit = InitAudit()
    quiet_trainer(tmp_path, [audit], max_epochs=1, logger=logger).fit(Classify(zero_head()), loader())
    run = read_tensorboard(tmp_path / "tb")
    assert run.scalars["init_audit/identical_groups/net.4"] == [(0, 1.0), (10, 0.0)]
    assert run.scalars["init_audit/identical_groups"] == [(0, 1.0), (10, 0.0)]
    assert set(run.scalars) >= {"init_audit/dead_fraction/net.0", "init_audit/dead_fraction/net.2"}
    (report,) = run.text_values("init_audit/report")
    assert "**Init audit: ok**" in report and "**symmetric_init** (notice) in `net.4`" in report


class Lines(logging.Handler):
    """Every message a logger emits, as it would print."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_console_gets_one_summary_line_through_lightnings_rank_zero_log(tmp_path: Path) -> None:
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info writes
    lines = Lines()
    rank_zero.addHandler(lines)
    try:
        quiet_trainer(tmp_path, [InitAudit()], max_epochs=2).fit(Classify(default_mlp()), loader())
    finally:
        rank_zero.removeHandler(lines)
    summary = [line for line in lines.lines if line.startswith("InitAudit:")]
    assert len(summary) == 1, summary
    assert summary[0].startswith("InitAudit: 3 layers checked at steps 0 and 10: no issue"), summary


def test_a_fit_resumed_between_step_0_and_steps_judges_like_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = InitAudit(on_issue="log")
    quiet_trainer(tmp_path / "whole", [whole], max_epochs=1).fit(Classify(zero_mlp_tanh()), loader())

    checkpoint = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    cut = quiet_trainer(
        tmp_path / "cut", [InitAudit(on_issue="log"), checkpoint], max_steps=5, enable_checkpointing=True
    )
    cut.fit(Classify(zero_mlp_tanh()), loader())
    (path,) = (tmp_path / "ckpt").glob("*step=5*.ckpt")
    resumed = InitAudit(on_issue="log")
    quiet_trainer(tmp_path / "resumed", [resumed], max_epochs=1).fit(
        Classify(zero_mlp_tanh()), loader(), ckpt_path=path
    )
    assert resumed.steps_judged == whole.steps_judged == 10
    assert [f.to_dict() for f in resumed.findings_] == [f.to_dict() for f in whole.findings_]
    assert {f.layer for f in resumed.issues} == {"net.0", "net.2", "net.4"}


def test_a_fit_resumed_after_the_check_is_not_judged_again(tmp_path: Path) -> None:
    audit = InitAudit(on_issue="log", steps=2)
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, [audit, checkpoint], max_epochs=1, enable_checkpointing=True).fit(
        Classify(zero_mlp_tanh()), loader()
    )
    again = InitAudit(on_issue="raise", steps=2)  # would raise if it judged the symmetric net again
    quiet_trainer(tmp_path, [again], max_epochs=2).fit(
        Classify(zero_mlp_tanh()), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert [f.to_dict() for f in again.findings_] == [f.to_dict() for f in audit.findings_]
