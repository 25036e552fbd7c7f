"""InitAudit under DDP (``ddp_spawn``, 2 CPU ranks), in every fold of a CrossValidator, and its refusal of sharded
strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from epochkit import CrossValidator, InitAudit, InitAuditError
from tests.helpers import QUIET, fit_ddp, quiet_trainer
from tests.init_audit.zoo import CLASSES, FEATURES, Classify, ZooData, mlp, zero_mlp_tanh
from tests.stopping.test_sharding import process_group  # noqa: F401  (the one-process gloo group fixture)


def _spiked_mlp() -> nn.Module:
    """Unit 0 of ``net.0`` is positive on sample 5 only (feature 1 is 100 there, 0 elsewhere); the others always."""
    torch.manual_seed(0)
    net = mlp(nn.ReLU)
    with torch.no_grad():
        net[0].weight.mul_(0.01)
        net[0].bias.fill_(1.0)
        net[0].weight[0] = 0.0
        net[0].weight[0, 1] = 1.0
        net[0].bias[0] = -50.0
    return net


@pytest.mark.ddp
def test_ddp_checks_once_every_rank_agrees_and_dead_masks_are_summed_over_ranks(tmp_path: Path) -> None:
    # net.0: unit 0 is positive on sample 5 only, which lands on one rank: dead there, alive on the other, alive
    # overall. net.2: zeroed, so its units stay identical (and dead).
    net = _spiked_mlp()
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.zero_()
    reports = fit_ddp(Classify(net, lr=0.01), ZooData("spike"), tmp_path, [InitAudit(on_issue="log")], max_epochs=1)
    states = [next(v for k, v in r.callback_states.items() if k.startswith("InitAudit")) for r in reports]
    assert all(r.error is None for r in reports)
    assert states[0]["findings"] == states[1]["findings"]
    found = {(f["code"], f["layer"], f["step"]) for f in states[0]["findings"]}
    # 48 samples per rank in batches of 8: the epoch ends after 6 optimizer steps, before steps=10.
    assert ("symmetric_units", "net.2", 6) in found and ("dead_layer", "net.2", 6) in found, found
    assert states[0]["dead_fraction"] == states[1]["dead_fraction"]
    assert states[0]["dead_fraction"]["net.0"] == 0.0


@pytest.mark.ddp
def test_ddp_raises_on_every_rank(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="InitAuditError"):
        fit_ddp(Classify(zero_mlp_tanh()), ZooData(), tmp_path, [InitAudit(on_issue="raise", steps=3)], max_epochs=2)
    # The launcher stops the other worker as soon as one fails, so a rank may be stopped before it writes its
    # report, and the launching process reports the worker's error as its own; every report shows the same error.
    reports = [tmp_path / "rank_reports" / f"rank{r}.pt" for r in (0, 1)]
    errors = [torch.load(path, weights_only=False)["error"] for path in reports if path.exists()]
    assert reports[0].exists()
    assert all(e is not None and "InitAuditError" in e and "step 3: symmetric_units in 'net.0'" in e for e in errors)


class ZeroingLinear(nn.Linear):
    """A Linear whose own ``reset_parameters`` is broken: it zeroes the layer."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def _broken_reinit_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(ZeroingLinear(FEATURES, 32), nn.Tanh(), ZeroingLinear(32, CLASSES))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            nn.init.kaiming_uniform_(layer.weight, a=5**0.5)  # random before the folds: only the reinit breaks it
    return net


def test_a_broken_reinit_is_caught_in_fold_0(tmp_path: Path) -> None:
    cv = CrossValidator(3, reset="reinit", root_dir=tmp_path / "cv", verbose=False)
    kwargs = {**QUIET, "max_epochs": 2, "callbacks": [InitAudit(on_issue="raise")]}
    with pytest.raises(InitAuditError, match=r"symmetric_units in 'net.0'") as caught:
        cv.fit(Classify(_broken_reinit_net()), ZooData(), trainer_kwargs=kwargs)
    # A fold trains on 64 of the 96 samples: 8 optimizer steps per epoch, so it is judged at the end of epoch 0.
    assert caught.value.findings[0].step == 8
    assert (tmp_path / "cv" / "fold_0").is_dir() and not (tmp_path / "cv" / "fold_1").exists()


def test_every_fold_of_a_sound_reinit_is_checked_and_quiet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cv = CrossValidator(2, reset="reinit", root_dir=tmp_path / "cv", verbose=False)
    kwargs = {**QUIET, "max_epochs": 1, "callbacks": [InitAudit(on_issue="raise")]}
    result = cv.fit(Classify(mlp(nn.ReLU)), ZooData(), trainer_kwargs=kwargs)
    assert len(result.folds) == 2


@pytest.mark.usefixtures("process_group")
def test_a_sharded_strategy_is_refused_at_setup(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, [InitAudit()], devices=1, strategy=ModelParallelStrategy(), max_epochs=1)
    with pytest.raises(MisconfigurationException, match=r"InitAudit cannot check a fit under ModelParallelStrategy"):
        trainer.fit(Classify(mlp()), ZooData())
    assert trainer.global_step == 0
