"""With only Lightning's arguments, epochkit's EarlyStopping is Lightning's.

For each behaviour Lightning documents (patience counting, thresholds, divergence, non-finite values, where the check
runs with ``val_check_interval`` / ``check_val_every_n_epoch``, ``min_epochs`` / ``min_steps``, resume, pickling, log
lines with ``log_rank_zero_only``), both classes run side by side on the same metric values with a real Trainer, and
every observable outcome must match: stop step and epoch, reason, message, ``state_dict``, pickled attributes, the
calls of Lightning's ``_evaluate_stopping_criteria`` and their arguments, log lines, files written. Written from
Lightning's documentation and public source (``callbacks/early_stopping.py``, ``loops/``); no test code copied.

The deliberate differences are tested at the end of this module and listed in the README's drop-in paragraph.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import random
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.rank_zero import rank_zero_only as pytorch_rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utilities_rank_zero_only

import epochkit
from tests.stopping.scripted import fit

nan, inf = math.nan, math.inf
_rng = random.Random(4)
RANDOM_WALK = [round(1.0 + sum(_rng.gauss(-0.01, 0.05) for _ in range(i)), 3) for i in range(25)]
CLASSES = {"lightning": LightningEarlyStopping, "epochkit": epochkit.EarlyStopping}

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
    # Values Lightning accepts, with its meaning: a negative min_delta is a tolerance (1.02 after 1.0 still counts as
    # an improvement, and becomes the new best), a float patience counts checks, numpy scalars and tensors work.
    ("negative_min_delta", [1.0, 1.02, 1.05, 1.2, 1.3, 1.4], {"min_delta": -0.05, "patience": 1}),
    ("negative_min_delta_max", [1.0, 0.98, 0.9, 0.95, 0.8], {"min_delta": -0.05, "patience": 1, "mode": "max"}),
    ("float_patience", [1.0, 0.9, 0.95, 0.96, 0.97, 0.99], {"patience": 2.0}),
    ("fractional_patience", [1.0, 0.9, 0.95, 0.96, 0.97, 0.99], {"patience": 1.5}),
    ("numpy_patience", [1.0, 0.9, 0.95, 0.96, 0.97, 0.99], {"patience": np.int64(3)}),
    ("numpy_min_delta", [1.0, 0.95, 0.9, 0.89, 0.85, 0.84], {"min_delta": np.float32(0.01), "patience": 1}),
    ("tensor_min_delta", [1.0, 0.95, 0.9, 0.89, 0.85, 0.84], {"min_delta": torch.tensor(0.01), "patience": 1}),
    ("tensor_threshold", [1.0, 0.5, 0.2, 0.1, 0.05], {"stopping_threshold": torch.tensor(0.15)}),
]


def _make(cls: type, kwargs: dict[str, Any]) -> Any:
    # A fresh copy for each instance: Lightning negates a tensor min_delta in place ("min" mode).
    return cls(monitor="val_loss", **copy.deepcopy(kwargs))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a.shape == b.shape and bool(torch.equal(a, b) or (a.isnan().all() and b.isnan().all()))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


def _assert_same_state(ours: Any, theirs: Any) -> None:
    estate, lstate = ours.state_dict(), theirs.state_dict()
    assert list(estate) == list(lstate)
    for key in lstate:
        assert _same_value(estate[key], lstate[key]), (key, estate[key], lstate[key])


def _run_both(seq: list[float], kwargs: dict[str, Any], root: Path, **fit_kwargs: Any) -> dict[str, tuple[Any, ...]]:
    out = {}
    for name, cls in CLASSES.items():
        callback = _make(cls, kwargs)
        trainer, trace, model = fit(callback, seq, root / name, **fit_kwargs)
        out[name] = (callback, trainer, trace, model)
    return out


def _assert_same_run(seq: list[float], kwargs: dict[str, Any], root: Path, **fit_kwargs: Any) -> None:
    runs = _run_both(seq, kwargs, root, **fit_kwargs)
    (lcb, ltrainer, ltrace, _), (ecb, etrainer, etrace, _) = runs["lightning"], runs["epochkit"]
    assert etrace.rows == ltrace.rows  # every check: wait_count, best, reason (the same member), message, stop
    assert (etrainer.global_step, etrainer.current_epoch) == (ltrainer.global_step, ltrainer.current_epoch)
    assert etrainer.should_stop == ltrainer.should_stop
    assert ecb.stopping_reason is lcb.stopping_reason
    assert (ecb.stopped_epoch, ecb.stopping_reason_message) == (lcb.stopped_epoch, lcb.stopping_reason_message)
    assert ecb.state_key == lcb.state_key
    _assert_same_state(ecb, lcb)


# ---------------------------------------------------------------------------------- patience, thresholds, finiteness


@pytest.mark.parametrize(("seq", "kwargs"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_same_decisions_as_lightning(seq: list[float], kwargs: dict[str, Any], tmp_path: Path) -> None:
    _assert_same_run(seq, kwargs, tmp_path)


def test_the_scenarios_do_stop_for_every_lightning_reason(tmp_path: Path) -> None:
    """The comparison above is only worth something if the scenarios reach each of Lightning's reasons."""
    reasons = set()
    for name, seq, kwargs in SCENARIOS:
        callback = _make(LightningEarlyStopping, kwargs)
        fit(callback, seq, tmp_path / name)
        reasons.add(callback.stopping_reason)
    assert reasons == set(EarlyStoppingReason)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seq=st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.30000001, 0.4, 1.0, nan]), min_size=2, max_size=8),
    patience=st.integers(0, 3),
    min_delta=st.sampled_from([0.0, 0.1, 0.2, -0.1]),
    mode=st.sampled_from(["min", "max"]),
    check_finite=st.booleans(),
)
def test_same_decisions_on_generated_sequences(
    seq: list[float], patience: int, min_delta: float, mode: str, check_finite: bool, tmp_path_factory: Any
) -> None:
    kwargs = {"patience": patience, "min_delta": min_delta, "mode": mode, "check_finite": check_finite}
    _assert_same_run(seq, kwargs, tmp_path_factory.mktemp("gen"))


VALUES = [0.1, 0.2, 0.25, 0.3, 0.30000001, 0.5, 1.0, 1.2, 2.0, -0.5, nan, inf, -inf]


def _random_arguments(rng: random.Random) -> dict[str, Any]:
    return {
        "mode": rng.choice(["min", "max"]),
        "patience": rng.choice([0, 1, 2, 3, 2.5, np.int64(2)]),
        "min_delta": rng.choice([0.0, 0.05, 0.1, -0.05, np.float32(0.05), torch.tensor(0.1)]),
        "check_finite": rng.random() < 0.8,
        "stopping_threshold": rng.choice([None, None, 0.2, 1.1]),
        "divergence_threshold": rng.choice([None, None, 1.5, 0.15]),
    }


def test_decisions_on_3000_random_sequences_match_lightnings_on_both_code_paths() -> None:
    """Check by check, Lightning's method, ours with Lightning's arguments (which calls Lightning's), and ours on its
    own code path (taken whenever an epochkit criterion argument is set; here a mean over a window of 1, which is
    the raw value) return the same decision and message and leave the same state."""
    rng = random.Random(10)
    checks = 0
    for _ in range(3000):
        kwargs = _random_arguments(rng)
        seq = [rng.choice(VALUES) for _ in range(rng.randint(1, 8))]
        lightning = _make(LightningEarlyStopping, kwargs)
        ours = _make(epochkit.EarlyStopping, kwargs)
        own_path = epochkit.EarlyStopping(monitor="val_loss", smoothing="mean", smoothing_window=1, **kwargs)
        assert own_path._own_criteria and not ours._own_criteria
        for value in seq:
            current = torch.tensor(value, dtype=torch.float32)
            expected = lightning._evaluate_stopping_criteria(current)
            for callback in (ours, own_path):
                assert callback._evaluate_stopping_criteria(current) == expected, (kwargs, seq, value)
                assert callback.wait_count == lightning.wait_count
                assert _same_value(callback.best_score, lightning.best_score)
                assert callback.stopping_reason is lightning.stopping_reason
            checks += 1
    assert checks > 10_000


# ---------------------------------------------------------------------------------- Lightning's extension point


@pytest.fixture
def evaluate_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Patch Lightning's ``EarlyStopping._evaluate_stopping_criteria`` (the extension point users override and tests
    patch) with a recorder that calls the original: which class called it, with which argument."""
    original = LightningEarlyStopping._evaluate_stopping_criteria
    calls: list[tuple[str, torch.Tensor]] = []

    def recording(self: LightningEarlyStopping, *args: Any, **kwargs: Any) -> tuple[bool, str | None]:
        assert not kwargs and len(args) == 1, (args, kwargs)  # exactly Lightning's call: one positional tensor
        calls.append((type(self).__module__, args[0].clone()))
        return original(self, *args)

    monkeypatch.setattr(LightningEarlyStopping, "_evaluate_stopping_criteria", recording)
    yield calls


def _calls_of(calls: list[tuple[str, torch.Tensor]], module_prefix: str) -> list[torch.Tensor]:
    return [value for module, value in calls if module.startswith(module_prefix)]


@pytest.mark.parametrize(
    "trainer_kwargs",
    [
        {"val_check_interval": 0.5},  # validation twice an epoch: the check moves to validation end
        {"check_val_every_n_epoch": 2},  # validation every other epoch: likewise
        {},  # once an epoch: the check runs at train epoch end
        {"check_on_train_epoch_end": False},
    ],
    ids=str,
)
def test_where_the_check_runs_and_what_lightnings_method_is_called_with(
    trainer_kwargs: dict[str, Any], evaluate_calls: list[tuple[str, torch.Tensor]], tmp_path: Path
) -> None:
    es_kwargs = {"patience": 2, **{k: v for k, v in trainer_kwargs.items() if k == "check_on_train_epoch_end"}}
    trainer_kwargs = {k: v for k, v in trainer_kwargs.items() if k != "check_on_train_epoch_end"}
    seq = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 1.0, 1.0]
    _assert_same_run(seq, es_kwargs, tmp_path, batches=4, limit_train_batches=4, **trainer_kwargs)
    theirs, ours = _calls_of(evaluate_calls, "lightning"), _calls_of(evaluate_calls, "epochkit")
    assert theirs and len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape == torch.Size([]) and a.dtype == b.dtype and torch.equal(a, b)


def test_a_metric_of_shape_1x1x1_is_squeezed_for_lightnings_method(
    evaluate_calls: list[tuple[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for cls in CLASSES.values():
        trainer = pl.Trainer(enable_progress_bar=False)
        trainer.callback_metrics["foo"] = torch.tensor([[[0.5]]])
        cls(monitor="foo")._run_early_stopping_check(trainer)
    (theirs,), (ours,) = _calls_of(evaluate_calls, "lightning"), _calls_of(evaluate_calls, "epochkit")
    assert ours.shape == theirs.shape == torch.Size([]) and float(ours) == 0.5


def test_a_patched_lightning_method_decides_for_both_classes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A user's patch of Lightning's method (here: stop at the third check, whatever the metric) reaches ours."""

    def third_check_stops(self: LightningEarlyStopping, current: torch.Tensor) -> tuple[bool, str | None]:
        self._checks_seen = getattr(self, "_checks_seen", 0) + 1
        return self._checks_seen == 3, f"check {self._checks_seen}"

    monkeypatch.setattr(LightningEarlyStopping, "_evaluate_stopping_criteria", third_check_stops)
    _assert_same_run([1.0, 0.9, 0.8, 0.7, 0.6], {}, tmp_path)
    ours = epochkit.EarlyStopping(monitor="val_loss")
    fit(ours, [1.0, 0.9, 0.8, 0.7, 0.6], tmp_path / "again")
    assert (ours.stopped_epoch, ours.stopping_reason_message) == (2, "check 3")


def test_an_override_of_lightnings_metric_check_is_honoured(tmp_path: Path) -> None:
    """Lightning checks the metric through ``_validate_condition_metric``; a subclass may override it (here: skip
    the checks of epochs 1 and 2) and must see the same effect with both classes."""
    runs = {}
    for name, base in CLASSES.items():

        class SkipEpochsOneAndTwo(base):  # type: ignore[valid-type, misc]
            def _validate_condition_metric(self, logs: dict[str, torch.Tensor]) -> bool:
                return self._epoch not in (1, 2) and super()._validate_condition_metric(logs)

            def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                self._epoch = trainer.current_epoch
                super().on_train_epoch_end(trainer, pl_module)

        callback = SkipEpochsOneAndTwo(monitor="val_loss", patience=1)
        trainer, trace, _ = fit(callback, [1.0, 1.1, 1.2, 1.3, 1.4], tmp_path / name)
        runs[name] = (trainer.current_epoch, callback.stopped_epoch, [row["wait_count"] for row in trace.rows])
    assert runs["epochkit"] == runs["lightning"] == (4, 3, [0, 0, 0, 1])


def test_a_patched_lightning_metric_check_decides_for_both_classes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A patch of Lightning's ``_validate_condition_metric`` (here: skip every check) reaches ours too."""
    monkeypatch.setattr(LightningEarlyStopping, "_validate_condition_metric", lambda self, logs: False)
    runs = _run_both([1.0, 1.1, 1.2, 1.3, 1.4], {"patience": 1}, tmp_path)
    for callback, trainer, trace, _ in runs.values():
        assert (trainer.current_epoch, callback.stopped_epoch, trace.rows[-1]["should_stop"]) == (5, 0, False)


def test_a_patched_lightning_metric_check_error_gets_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def stricter(self: LightningEarlyStopping, logs: dict[str, torch.Tensor]) -> bool:
        if self.monitor not in logs:
            raise RuntimeError(f"no {self.monitor} here")
        return True

    monkeypatch.setattr(LightningEarlyStopping, "_validate_condition_metric", stricter)
    with pytest.raises(RuntimeError, match=r"^no val_los here\. Did you mean `val_loss`\?$"):
        fit(epochkit.EarlyStopping(monitor="val_los", strict=False), [1.0, 0.9], tmp_path)


class _SkipAll:
    """Mixed into both classes: a ``_validate_condition_metric`` override that skips every check."""

    def _validate_condition_metric(self, logs: dict[str, torch.Tensor]) -> bool:
        return False


@pytest.mark.parametrize("rank", [0, 1])
def test_an_override_of_the_metric_check_is_honoured_under_a_faked_world_size(
    rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP (world size > 1) every rank asks its own ``_validate_condition_metric``, as Lightning's class does.
    (The real 2-process case: ``test_ddp.py``.)"""
    monkeypatch.chdir(tmp_path)
    for fn in (pytorch_rank_zero_only, fabric_rank_zero_only, utilities_rank_zero_only):
        monkeypatch.setattr(fn, "rank", getattr(fn, "rank", 0))  # restored after the test
    for base in CLASSES.values():
        skip_all = type("SkipAll", (_SkipAll, base), {})
        trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_progress_bar=False)
        trainer.strategy.cluster_environment.set_global_rank(rank)  # type: ignore[attr-defined]
        callback = skip_all(monitor="foo", patience=0)
        for value in (1.0, 2.0, 3.0):
            trainer.callback_metrics["foo"] = torch.tensor(value)
            callback._run_early_stopping_check(trainer)
        assert not trainer.should_stop and callback.wait_count == 0 and float(callback.best_score) == inf


class _StopWhenAboveOne(epochkit.EarlyStopping):
    """A subclass written against Lightning's signature, as users do."""

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        return should_stop or bool(current > 1.0), reason or "above one"


def test_a_subclass_overriding_lightnings_signature_works(tmp_path: Path) -> None:
    es = _StopWhenAboveOne(monitor="val_loss", patience=10)
    trainer, _, _ = fit(es, [1.0, 0.9, 1.5, 0.5], tmp_path)
    assert (trainer.current_epoch, es.stopped_epoch, es.stopping_reason_message) == (3, 2, "above one")


# ---------------------------------------------------------------------------------- min_epochs / min_steps


@pytest.mark.parametrize(
    ("batches", "min_epochs", "min_steps", "stop_step", "stop_epoch"),
    [
        (3, 0, 10, 10, 3),  # min_steps falls mid-epoch: Lightning stops right there (after validating)
        (4, 0, 10, 10, 2),
        (3, 4, 0, 12, 3),  # min_epochs: the stop waits for the end of epoch 3
        (3, 1, 10, 10, 3),
        (3, 3, 10, 10, 3),  # both: the later of the two
        (5, 3, 10, 15, 2),
        (3, 0, 4, 6, 1),  # already met when the stop is decided
    ],
)
def test_a_stop_decided_before_min_epochs_or_min_steps_fires_where_lightnings_does(
    batches: int, min_epochs: int, min_steps: int, stop_step: int, stop_epoch: int, tmp_path: Path
) -> None:
    # The metric only gets worse after epoch 0: with patience 0 the stop is decided at epoch 1 and never withdrawn.
    seq = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    kwargs = {"batches": batches, "limit_train_batches": batches, "min_epochs": min_epochs, "min_steps": min_steps}
    _assert_same_run(seq, {"patience": 0}, tmp_path, **kwargs)
    es = epochkit.EarlyStopping(monitor="val_loss", patience=0)
    trainer, _, _ = fit(es, seq, tmp_path / "again", **kwargs)
    assert (trainer.global_step, es.stopped_epoch, trainer.current_epoch) == (stop_step, stop_epoch, stop_epoch + 1)


# ---------------------------------------------------------------------------------- resume, pickling, state


def test_resume_mid_patience_matches_lightnings(tmp_path: Path) -> None:
    seq = [1.0, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]
    for name, cls in CLASSES.items():
        first = cls(monitor="val_loss", patience=4)
        trainer, _, _ = fit(first, seq, tmp_path / name / "first", max_epochs=3)
        trainer.save_checkpoint(tmp_path / name / "mid.ckpt")
    runs = {}
    for name, cls in CLASSES.items():
        # Each class resumes its own checkpoint and, crossed over, the other's.
        for source in CLASSES:
            resumed = cls(monitor="val_loss", patience=4)
            trainer, trace, _ = fit(
                resumed, seq, tmp_path / name / source, ckpt_path=str(tmp_path / source / "mid.ckpt")
            )
            assert trace.rows[0]["epoch"] == 3  # really resumed
            runs[name, source] = (resumed, trainer, trace)
    reference, ref_trainer, ref_trace = runs["lightning", "lightning"]
    assert reference.stopped_epoch == 5
    for resumed, trainer, trace in runs.values():
        assert trace.rows == ref_trace.rows and trainer.current_epoch == ref_trainer.current_epoch
        _assert_same_state(resumed, reference)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"patience": np.int64(3), "min_delta": torch.tensor(0.01), "mode": "max", "verbose": True},
        {"stopping_threshold": 0.1, "divergence_threshold": 5.0, "check_on_train_epoch_end": False},
    ],
    ids=["defaults", "numpy_and_tensor", "thresholds"],
)
@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_pickled_attributes_equal_the_originals_as_in_lightning(kwargs: dict[str, Any], dumps: Any) -> None:
    for cls in CLASSES.values():
        callback = _make(cls, kwargs)
        assert vars(pickle.loads(dumps(callback))) == vars(callback)
    ours, theirs = _make(epochkit.EarlyStopping, kwargs), _make(LightningEarlyStopping, kwargs)
    assert set(vars(theirs)) <= set(vars(ours))
    assert all(_same_value(vars(ours)[k], v) for k, v in vars(theirs).items())


def test_pickled_attributes_equal_after_a_fit_with_every_extra(tmp_path: Path) -> None:
    def attributes(callback: Any) -> dict[str, Any]:
        # During a fit Lightning binds the module's `log`/`log_dict` to every callback (a bound method pickles as a
        # copy of its module, so these two never compare equal, for Lightning's class either).
        return {k: v for k, v in vars(callback).items() if k not in ("log", "log_dict")}

    theirs = LightningEarlyStopping(monitor="val_loss", patience=2)
    ours = epochkit.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True, smoothing="ema")
    for callback in (theirs, ours):
        fit(callback, [1.0, 0.8, 0.85, 0.9, 0.95], tmp_path / type(callback).__module__)
        clone = pickle.loads(pickle.dumps(callback))
        assert vars(clone).keys() == vars(callback).keys()
        assert attributes(clone) == attributes(callback)
    assert ours._best_weights is not None and not ours._best_weights.empty


# ---------------------------------------------------------------------------------- log lines and files


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def early_stopping_log() -> Iterator[_Lines]:
    """The lines Lightning's EarlyStopping logs (its module logger), whatever the root logger's handlers."""
    handler = _Lines()
    logger = logging.getLogger("lightning.pytorch.callbacks.early_stopping")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("log_rank_zero_only", [False, True])
@pytest.mark.parametrize(("world_size", "rank"), [(1, 0), (2, 0), (2, 1)])
def test_verbose_log_lines_with_log_rank_zero_only_under_a_faked_world_size(
    world_size: int,
    rank: int,
    log_rank_zero_only: bool,
    early_stopping_log: _Lines,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    for fn in (pytorch_rank_zero_only, fabric_rank_zero_only, utilities_rank_zero_only):
        monkeypatch.setattr(fn, "rank", getattr(fn, "rank", 0))  # restored after the test
    lines: dict[str, list[str]] = {}
    for name, cls in CLASSES.items():
        # A real DDP Trainer, not launched: world size 2, and this process posing as `rank`.
        strategy = {"strategy": "ddp", "devices": 2} if world_size > 1 else {"devices": 1}
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, **strategy)
        if world_size > 1:
            trainer.strategy.cluster_environment.set_global_rank(rank)  # type: ignore[attr-defined]
        assert (trainer.world_size, trainer.global_rank) == (world_size, rank)
        callback = cls(monitor="foo", patience=1, verbose=True, log_rank_zero_only=log_rank_zero_only)
        early_stopping_log.lines.clear()
        for value in (1.0, 0.5, 0.7):  # improves, improves, stops
            trainer.callback_metrics["foo"] = torch.tensor(value)
            callback._run_early_stopping_check(trainer)
        lines[name] = list(early_stopping_log.lines)
    assert lines["epochkit"] == lines["lightning"]
    if world_size > 1 and rank == 1 and log_rank_zero_only:
        assert lines["lightning"] == []
    else:
        prefix = f"[rank: {rank}] " if world_size > 1 else ""
        assert lines["lightning"] == [
            f"{prefix}Metric foo improved. New best score: 1.000",
            f"{prefix}Metric foo improved by 0.500 >= min_delta = 0.0. New best score: 0.500",
            f"{prefix}Monitored metric foo did not improve in the last 1 records. Best score: 0.500. Signaling Trainer"
            " to stop.",
        ]
    assert sorted(tmp_path.iterdir()) == []


def test_a_check_outside_a_fit_writes_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    callbacks = [
        LightningEarlyStopping(monitor="val_loss"),
        epochkit.EarlyStopping(monitor="val_loss"),
        epochkit.EarlyStopping(monitor="val_loss", restore_best_weights=True, smoothing="mean"),
    ]
    for callback in callbacks:
        trainer = pl.Trainer(enable_progress_bar=False)  # the default logger: TensorBoard under ./lightning_logs
        for value in (1.0, 2.0, 3.0, 4.0):
            trainer.callback_metrics["val_loss"] = torch.tensor(value)
            callback._run_early_stopping_check(trainer)
        assert trainer.should_stop
    assert sorted(tmp_path.iterdir()) == []


def test_a_fit_writes_the_same_files(tmp_path: Path) -> None:
    def files(root: Path) -> list[str]:
        # Event file names carry the time, host and pid: keep their kind.
        return sorted(str(p.relative_to(root)).split(".out.tfevents")[0] for p in root.rglob("*") if p.is_file())

    runs = _run_both([1.0, 0.9, 0.95, 0.97, 0.99], {"patience": 2}, tmp_path, logger=True, enable_checkpointing=True)
    assert runs["epochkit"][1].current_epoch == runs["lightning"][1].current_epoch == 4
    assert files(tmp_path / "epochkit") == files(tmp_path / "lightning")
    assert "lightning_logs/version_0/checkpoints/epoch=3-step=4.ckpt" in files(tmp_path / "lightning")


# ---------------------------------------------------------------------------------- the deliberate differences


def test_difference_a_deferred_stop_is_withdrawn_when_a_later_check_recovers(tmp_path: Path) -> None:
    # min_epochs=4; the stop is decided at epoch 1 (1.1 after 1.0, patience 1) and the metric recovers at epoch 2.
    seq = [1.0, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5]
    runs = _run_both(seq, {"patience": 1}, tmp_path, min_epochs=4)
    (lcb, ltrainer, ltrace, _), (ecb, etrainer, etrace, _) = runs["lightning"], runs["epochkit"]
    assert ltrainer.current_epoch == 4 and lcb.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert etrainer.current_epoch == len(seq) and ecb.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    # Until the recovery both are the same, the flag raised at epoch 1 included.
    assert etrace.rows[:2] == ltrace.rows[:2] and etrace.rows[1]["should_stop"]
    assert not etrace.rows[2]["should_stop"] and ltrace.rows[2]["should_stop"]


@pytest.mark.parametrize(
    ("seq", "steps"),
    [
        ([1.0, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5], 21),  # recovered at epoch 2 (step 9): all 7 epochs of 3 steps
        # Recovered only at the check Lightning runs when min_steps is reached mid-epoch (step 10): that epoch has
        # already ended, 2 batches short, and training goes on from the next one.
        ([1.0, 1.1, 1.2, 0.5, 0.4, 0.3, 0.2], 19),
    ],
    ids=["before_min_steps", "at_the_min_steps_check"],
)
def test_difference_with_min_steps_a_recovery_keeps_training(seq: list[float], steps: int, tmp_path: Path) -> None:
    runs = _run_both(seq, {"patience": 1}, tmp_path, batches=3, limit_train_batches=3, min_steps=10)
    (_, ltrainer, _, _), (ecb, etrainer, _, _) = runs["lightning"], runs["epochkit"]
    assert (ltrainer.global_step, ltrainer.current_epoch) == (10, 4)
    assert (etrainer.global_step, etrainer.current_epoch) == (steps, len(seq))
    assert ecb.stopping_reason is EarlyStoppingReason.NOT_STOPPED and ecb.stopped_epoch == 0


def test_a_stop_another_callback_raised_first_is_never_withdrawn(tmp_path: Path) -> None:
    class StopAtEpochOne(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    # EarlyStopping decides to stop at epoch 1 too, after the other callback; the metric recovers at epoch 2.
    seq = [1.0, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5]
    runs = _run_both(seq, {"patience": 1}, tmp_path, min_epochs=4, extra_callbacks=[StopAtEpochOne()])
    assert runs["epochkit"][1].current_epoch == runs["lightning"][1].current_epoch == 4


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours_first", "other_first"])
def test_a_withdrawal_never_cancels_a_stop_another_early_stopping_asked_for_since(
    ours_first: bool, tmp_path: Path
) -> None:
    # min_epochs=4; ours (val_loss, patience 1) signals at epoch 1 and recovers at epoch 2; at epoch 2, a Lightning
    # EarlyStopping on a training metric reaches its stopping_threshold. Its stop must fire at min_epochs, as with
    # Lightning's class in our place.
    val, train = [1.0, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5], [1.0, 1.0, 0.4, 1.0, 1.0, 1.0, 1.0]
    handler = _Lines()
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        epochs = {}
        for name, cls in CLASSES.items():
            other = LightningEarlyStopping(monitor="train_err", stopping_threshold=0.5, check_on_train_epoch_end=True)
            ours = cls(monitor="val_loss", patience=1)
            first, second = (ours, other) if ours_first else (other, ours)
            trainer, _, _ = fit(first, val, tmp_path / name, train=train, extra_callbacks=[second], min_epochs=4)
            assert other.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD and other.stopped_epoch == 2
            epochs[name] = trainer.current_epoch
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    assert epochs == {"lightning": 4, "epochkit": 4}
    # Ours withdrew its own claim (the metric recovered); the Trainer's flag is the other callback's, raised after
    # the withdrawal (ours runs first) or kept by it (the other's stop came first).
    assert ours.stopping_reason is EarlyStoppingReason.NOT_STOPPED and ours.stopped_epoch == 0
    (line,) = [line for line in handler.lines if line.startswith("EarlyStopping: withdrew")]
    kept = "but another callback asked to stop since: the Trainer still stops."
    assert line.endswith("so training continues." if ours_first else kept)


def test_a_timer_whose_time_ran_out_counts_as_a_stop_request(tmp_path: Path) -> None:
    """What the withdrawal compares for a ``Timer``: whether its time is up (it asks to stop at its next check)."""
    states = {}
    for name, duration in (("running", timedelta(days=1)), ("elapsed", timedelta(0))):
        timer = Timer(duration=duration)
        es = epochkit.EarlyStopping(monitor="val_loss")
        trainer = pl.Trainer(callbacks=[timer, es], logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
        timer.on_train_start(trainer, None)  # type: ignore[arg-type]  # Timer starts its clock here
        states[name] = es._stop_requests(trainer)
    assert states == {"running": (False,), "elapsed": (True,)}


def test_difference_the_withdrawal_is_logged_where_lightnings_messages_go(tmp_path: Path) -> None:
    handler = _Lines()
    logger = logging.getLogger("lightning.pytorch")  # Lightning's console handler hangs here
    logger.addHandler(handler)
    try:
        fit(epochkit.EarlyStopping(monitor="val_loss", patience=1), [1.0, 1.1, 0.9, 0.8, 0.7], tmp_path, min_epochs=4)
    finally:
        logger.removeHandler(handler)
    (line,) = [line for line in handler.lines if line.startswith("EarlyStopping:")]
    assert line == (
        "EarlyStopping: withdrew the stop signalled at epoch 1 (PATIENCE_EXHAUSTED), which was waiting for the"
        " Trainer's min_epochs=4 / min_steps=None: the check at epoch 2 (val_loss = 0.9) no longer asks to stop, so"
        " training continues."
    )


def test_difference_a_missing_metric_names_the_closest_one(tmp_path: Path) -> None:
    for cls in CLASSES.values():
        with pytest.raises(RuntimeError, match="Early stopping conditioned on metric `val_los` which is not available"):
            fit(cls(monitor="val_los"), [1.0, 0.9], tmp_path / cls.__module__)
    with pytest.raises(RuntimeError, match=r"use any of the following: `.*`\. Did you mean `val_loss`\?$"):
        fit(epochkit.EarlyStopping(monitor="val_los"), [1.0, 0.9], tmp_path / "again")


def test_difference_strict_false_warns_once_at_the_first_check_that_misses_the_metric(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(LightningEarlyStopping(monitor="val_los", strict=False), [1.0, 0.9, 0.8], tmp_path / "lightning")
    assert not [w for w in record if "val_los" in str(w.message)]  # Lightning: silent unless verbose=True
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, _, _ = fit(epochkit.EarlyStopping(monitor="val_los", strict=False), [1.0, 0.9, 0.8], tmp_path)
    ours = [str(w.message) for w in record if "val_los" in str(w.message)]
    assert len(ours) == 1 and trainer.current_epoch == 3  # three checks missed it, one warning
    assert ours[0].startswith("EarlyStopping(strict=False): a check found no `val_los` and was skipped")
    assert ours[0].endswith("Did you mean `val_loss`?")


def test_difference_a_value_lightning_cannot_use_fails_at_construction_not_at_a_check(tmp_path: Path) -> None:
    theirs = LightningEarlyStopping(monitor="val_loss", patience="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'>=' not supported"):
        fit(theirs, [1.0, 1.1, 1.2], tmp_path)  # after the first epochs were trained
    with pytest.raises(ValueError, match=r"`patience='2'` is invalid; it must be a real number"):
        epochkit.EarlyStopping(monitor="val_loss", patience="2")  # type: ignore[arg-type]
