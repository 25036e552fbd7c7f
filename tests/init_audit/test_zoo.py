"""The bug zoo is caught (``InitAuditError`` naming the layer) and the healthy zoo stays quiet, at the default
``steps``, in a real fit. Each bug's premise is proved first with plain torch: its units really stay identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from epochkit import InitAudit, InitAuditError
from tests.helpers import quiet_trainer
from tests.init_audit.zoo import BUG_ZOO, HEALTHY_ZOO, Classify, loader

STEPS = 10  # InitAudit's default


def _units(layer: nn.Module) -> torch.Tensor:
    """One row per output unit, with its bias (plain torch, independent of the audit's code)."""
    weight = layer.weight.detach()
    rows = weight.t() if isinstance(layer, nn.Embedding) else weight.reshape(weight.shape[0], -1)
    bias = getattr(layer, "bias", None)
    return torch.cat([rows, bias.detach()[:, None]], 1) if bias is not None else rows


def _all_identical(layer: nn.Module) -> bool:
    rows = _units(layer)
    return bool((rows - rows[0]).abs().max() <= 1e-6 * rows.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(BUG_ZOO))
def test_the_premise_units_stay_identical_under_plain_torch(name: str) -> None:
    build, kind, layers = BUG_ZOO[name]
    net = build()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    assert all(_all_identical(net.get_submodule(p.removeprefix("net."))) for p in layers)
    for step, (x, y) in enumerate(loader(kind)):
        if step == STEPS:
            break
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    for path in layers:
        layer = net.get_submodule(path.removeprefix("net."))
        assert _all_identical(layer), f"{name}: {path}'s units differentiated"


@pytest.mark.parametrize("name", list(BUG_ZOO))
def test_the_bug_zoo_is_caught_with_the_layer_named(name: str, tmp_path: Path) -> None:
    build, kind, layers = BUG_ZOO[name]
    audit = InitAudit(on_issue="raise")
    trainer = quiet_trainer(tmp_path, [audit], max_epochs=3)
    with pytest.raises(InitAuditError) as caught:
        trainer.fit(Classify(build()), loader(kind))
    assert trainer.current_epoch == 0 and trainer.global_step == STEPS  # raised at step 10, inside epoch 0
    named = {f.layer for f in caught.value.findings if f.code == "symmetric_units"}
    assert set(layers) <= named, (name, [f.message() for f in caught.value.findings])
    assert all(f.severity == "issue" and f.step == STEPS for f in caught.value.findings)
    assert all(f"still identical after {STEPS} optimizer steps" in f.evidence for f in caught.value.findings)


@pytest.mark.parametrize("name", list(HEALTHY_ZOO))
def test_the_healthy_zoo_is_quiet(name: str, tmp_path: Path) -> None:
    build, kind = HEALTHY_ZOO[name]
    audit = InitAudit(on_issue="raise")
    trainer = quiet_trainer(tmp_path, [audit], max_epochs=1)
    trainer.fit(Classify(build(), lr=0.05), loader(kind))
    assert trainer.state.finished
    assert audit.issues == [], [f.message() for f in audit.issues]
    assert audit.steps_judged == STEPS
    assert audit.symmetry_done_ and audit.dead_done_ and not audit._hooks_


def test_a_zero_head_is_a_notice_that_names_it(tmp_path: Path) -> None:
    build, kind = HEALTHY_ZOO["zero-initialised classifier head"]
    audit = InitAudit(on_issue="raise")
    quiet_trainer(tmp_path, [audit], max_epochs=1).fit(Classify(build()), loader(kind))
    notices = [(f.code, f.layer) for f in audit.findings_ if f.code.startswith("symmetric")]
    assert notices == [("symmetric_init", "net.4")]
    assert "4 of 4 units in 1 group identical at step 0, all differentiated by step 10" in audit.findings_[0].evidence
