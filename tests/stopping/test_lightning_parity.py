"""With only Lightning's arguments, epochkit's EarlyStopping is Lightning's: both run on the same metric sequences
with a real Trainer, and every check's decision, count, best value, reason and message must match."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

import epochkit
from epochkit.stopping import StoppingReason
from tests.stopping.scripted import fit

nan, inf = math.nan, math.inf
_rng = random.Random(4)
RANDOM_WALK = [round(1.0 + sum(_rng.gauss(-0.01, 0.05) for _ in range(i)), 3) for i in range(25)]

SCENARIOS: list[tuple[str, list[float], dict[str, Any]]] = [
    ("defaults", [1.0, 0.9, 0.9, 0.95, 0.91, 0.89, 0.89, 0.9, 0.92], {}),
    ("never_stops", [1.0, 0.9, 0.8, 0.85, 0.7, 0.6], {"patience": 2}),
    ("patience_0", [1.0, 0.9, 0.95, 0.5], {"patience": 0}),
    ("patience_2", [1.0, 0.9, 0.95, 0.85, 0.86, 0.87, 0.1], {"patience": 2}),
    ("min_delta", [1.0, 0.95, 0.9, 0.89, 0.85, 0.84, 0.849, 0.8], {"min_delta": 0.05, "patience": 2}),
    ("min_delta_float32_edge", [0.3, 0.2, 0.1, 0.0, 0.1], {"min_delta": 0.1, "patience": 1}),
    ("max_mode", [0.1, 0.5, 0.4, 0.6, 0.6, 0.55, 0.59], {"mode": "max", "patience": 2, "min_delta": 0.01}),
    ("stopping_threshold", [1.0, 0.5, 0.2, 0.1, 0.05], {"stopping_threshold": 0.1}),
    ("divergence", [1.0, 0.5, 2.0, 5.0, 0.1], {"divergence_threshold": 4.0}),
    ("non_finite", [1.0, 0.5, nan, 0.4], {}),
    ("infinite", [1.0, inf, 0.4], {}),
    ("check_finite_off", [1.0, nan, nan, 0.9, 0.8, nan, nan, nan], {"check_finite": False, "patience": 2}),
    ("on_validation_end", [1.0, 0.9, 0.95, 0.96, 0.97, 0.1], {"patience": 2, "check_on_train_epoch_end": False}),
    ("random_walk", RANDOM_WALK, {"patience": 4, "min_delta": 0.01}),
    ("random_walk_max", RANDOM_WALK, {"patience": 3, "mode": "max"}),
]


def _run_both(seq: list[float], kwargs: dict[str, Any], root: Path, **trainer_kwargs: Any) -> tuple[Any, Any]:
    results = []
    for name, cls in (("lightning", LightningEarlyStopping), ("epochkit", epochkit.EarlyStopping)):
        callback = cls(monitor="val_loss", **kwargs)
        trainer, trace, _ = fit(callback, seq, root / name, **trainer_kwargs)
        results.append((callback, trainer, trace))
    return results[0], results[1]


def _assert_same_run(seq: list[float], kwargs: dict[str, Any], root: Path, **trainer_kwargs: Any) -> None:
    (lcb, ltrainer, ltrace), (ecb, etrainer, etrace) = _run_both(seq, kwargs, root, **trainer_kwargs)
    assert etrace.rows == ltrace.rows  # every check: wait_count, best, reason (the same member), message, stop
    assert etrainer.current_epoch == ltrainer.current_epoch
    assert ecb.stopping_reason is lcb.stopping_reason
    assert ecb.state_key == lcb.state_key
    estate, lstate = ecb.state_dict(), lcb.state_dict()
    assert list(estate) == list(lstate)
    for key in lstate:
        if isinstance(lstate[key], torch.Tensor):
            assert torch.equal(estate[key], lstate[key]) or (estate[key].isnan() and lstate[key].isnan()), key
        else:
            assert estate[key] == lstate[key], key


@pytest.mark.parametrize(("seq", "kwargs"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_same_decisions_as_lightning(seq: list[float], kwargs: dict[str, Any], tmp_path: Path) -> None:
    _assert_same_run(seq, kwargs, tmp_path)


def test_the_scenarios_do_stop_for_every_lightning_reason(tmp_path: Path) -> None:
    """The comparison above is only worth something if the scenarios reach each of Lightning's reasons."""
    reasons = set()
    for _, seq, kwargs in SCENARIOS:
        callback = LightningEarlyStopping(monitor="val_loss", **kwargs)
        fit(callback, seq, tmp_path / str(len(reasons)) / str(len(seq)))
        reasons.add(callback.stopping_reason)
    assert reasons == set(EarlyStoppingReason)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seq=st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.30000001, 0.4, 1.0, nan]), min_size=2, max_size=8),
    patience=st.integers(0, 3),
    min_delta=st.sampled_from([0.0, 0.1, 0.2]),
    mode=st.sampled_from(["min", "max"]),
    check_finite=st.booleans(),
)
def test_same_decisions_on_generated_sequences(
    seq: list[float], patience: int, min_delta: float, mode: str, check_finite: bool, tmp_path_factory: Any
) -> None:
    kwargs = {"patience": patience, "min_delta": min_delta, "mode": mode, "check_finite": check_finite}
    _assert_same_run(seq, kwargs, tmp_path_factory.mktemp("gen"))


def test_lightning_finds_it_and_checkpoints_load_both_ways(tmp_path: Path) -> None:
    ours = epochkit.EarlyStopping(monitor="val_loss", patience=2)
    trainer, _, _ = fit(ours, [1.0, 0.9, 0.95, 0.97, 0.99], tmp_path)
    assert trainer.early_stopping_callback is ours
    assert isinstance(ours, LightningEarlyStopping)
    path = tmp_path / "es.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["callbacks"][ours.state_key]
    theirs = LightningEarlyStopping(monitor="val_loss", patience=2)
    theirs.load_state_dict(state)
    again = epochkit.EarlyStopping(monitor="val_loss", patience=2)
    again.load_state_dict(theirs.state_dict())
    assert again.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert again.wait_count == theirs.wait_count == 2
    assert float(again.best_score) == float(theirs.best_score) == pytest.approx(0.9)


def test_reason_enum_parallels_lightnings() -> None:
    for member in EarlyStoppingReason:
        assert StoppingReason[member.name].value == member.value
        assert StoppingReason[member.name] == member and member == StoppingReason[member.name]
        assert hash(StoppingReason[member.name]) == hash(member)
    assert StoppingReason.GENERALIZATION_LOSS != EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert {m.value for m in StoppingReason} - {m.value for m in EarlyStoppingReason} == {5, 6, 7, 8}
