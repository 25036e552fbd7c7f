"""Bad arguments fail at construction with a message naming the argument, the value and what is allowed."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import epochkit
from epochkit.stopping.early_stopping import _EXTRA_DEFAULTS
from tests.stopping.scripted import fit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # Lightning's arguments: only what cannot work in Lightning's class either (it would fail at a check)
        ({"patience": "3"}, r"`patience='3'` is invalid; it must be a real number \(int, float, numpy scalar or one-"),
        ({"patience": None}, r"`patience=None` is invalid; it must be a real number"),
        ({"min_delta": [0.1]}, r"`min_delta=\[0.1\]` is invalid; it must be a real number"),
        ({"min_delta": torch.tensor([0.1, 0.2])}, r"`min_delta=tensor\(\[0.1000, 0.2000\]\)` is invalid"),
        ({"stopping_threshold": "0.1"}, r"`stopping_threshold='0.1'` is invalid; it must be a real number .* or None"),
        ({"divergence_threshold": 1j}, r"`divergence_threshold=1j` is invalid"),
        ({"monitor": ""}, r"`monitor=''` is invalid; it must be the name of a logged metric"),
        ({"monitor": None}, r"`monitor=None` is invalid"),
        # epochkit's arguments
        ({"min_delta_mode": "pct"}, r"`min_delta_mode='pct'` is invalid; allowed: \['abs', 'rel'\]"),
        (
            {"restore_best_weights": "best"},
            r"`restore_best_weights='best'` is invalid; allowed: True, False, 'checkpoint'",
        ),
        ({"start_from_epoch": -2}, r"`start_from_epoch=-2` is invalid; it must be an int >= 0"),
        ({"baseline": float("nan")}, r"`baseline=nan` is invalid; it must be a finite number or None"),
        ({"smoothing": "gauss"}, r"`smoothing='gauss'` is invalid; allowed: \['ema', 'mean', 'median'\] or None"),
        ({"smoothing": "ema", "smoothing_window": 0}, r"`smoothing_window=0` is invalid; it must be an int >= 1"),
        ({"criterion": "GL_5"}, r"`criterion='GL_5'` is invalid; allowed: \['patience', 'GL', 'PQ', 'UP'\]"),
        ({"criterion": "GL"}, r"`alpha=None` is invalid; criterion='GL' needs a finite number > 0"),
        ({"criterion": "GL", "alpha": 0.0}, r"`alpha=0.0` is invalid; criterion='GL' needs a finite number > 0"),
        ({"criterion": "GL", "alpha": -1}, r"`alpha=-1` is invalid"),
        ({"criterion": "GL", "alpha": 5, "mode": "max"}, r"`mode='max'` is invalid; criterion='GL' is defined on an"),
        ({"criterion": "PQ", "alpha": 1.0}, r"`train_monitor=None` is invalid; criterion='PQ' needs the name of a"),
        ({"criterion": "UP"}, r"`successive_strips=None` is invalid; criterion='UP' needs an int >= 1"),
        ({"criterion": "UP", "successive_strips": 2, "strip_length": 0}, r"`strip_length=0` is invalid"),
        ({"alpha": 5.0}, r"`alpha=5.0` is invalid; it only applies to criterion='GL' or 'PQ'"),
        (
            {"train_monitor": "train_loss"},
            r"`train_monitor='train_loss'` is invalid; it only applies to criterion='PQ'",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        epochkit.EarlyStopping(**{"monitor": "val_loss", **kwargs})


@pytest.mark.parametrize(
    ("name", "effect"),
    [
        ("patience", "patience never runs out"),
        ("min_delta", "no check ever counts as an improvement"),
        ("stopping_threshold", "the threshold is never reached"),
        ("divergence_threshold", "the threshold is never reached"),
    ],
)
def test_a_nan_argument_works_as_in_lightning_with_a_warning(name: str, effect: str) -> None:
    with pytest.warns(
        UserWarning, match=rf"EarlyStopping\({name}=nan\): every comparison with NaN is False, so {effect}"
    ):
        es = epochkit.EarlyStopping(monitor="val_loss", **{name: float("nan")})
    assert math.isnan(getattr(es, name))


def test_epochkit_int_arguments_take_numpy_ints() -> None:
    es = epochkit.EarlyStopping(
        monitor="val_loss", start_from_epoch=np.int64(2), smoothing="mean", smoothing_window=np.int32(3)
    )
    assert (es.start_from_epoch, es.smoothing_window) == (2, 3)
    with pytest.raises(ValueError, match=r"`start_from_epoch=True` is invalid; it must be an int >= 0"):
        epochkit.EarlyStopping(monitor="val_loss", start_from_epoch=True)


def test_unknown_mode_fails_as_in_lightning() -> None:
    with pytest.raises(MisconfigurationException, match="`mode` can be min, max, got avg"):
        epochkit.EarlyStopping(monitor="val_loss", mode="avg")


def test_the_constructor_stores_its_arguments_under_their_names() -> None:
    kwargs: dict[str, Any] = {
        "restore_best_weights": "checkpoint",
        "start_from_epoch": 2,
        "baseline": 0.3,
        "min_delta_mode": "rel",
        "smoothing": "median",
        "smoothing_window": 4,
        "criterion": "PQ",
        "alpha": 0.5,
        "strip_length": 4,
        "train_monitor": "train_loss_epoch",
    }
    es = epochkit.EarlyStopping(monitor="val_loss", patience=7, **kwargs)
    assert {name: getattr(es, name) for name in kwargs} == kwargs
    assert es.patience == 7 and es.successive_strips is None


@pytest.mark.parametrize(
    "setting", [{"check_on_train_epoch_end": False}, {"trainer": {"check_val_every_n_epoch": 2}}], ids=str
)
def test_pq_checked_at_validation_end_fails_at_setup(setting: dict[str, Any], tmp_path: Path) -> None:
    """At validation end this epoch's training loss does not exist yet: PQ would read a stale one."""
    kwargs = {k: v for k, v in setting.items() if k != "trainer"}
    es = epochkit.EarlyStopping(
        monitor="val_loss", criterion="PQ", alpha=1.0, strip_length=2, train_monitor="train_loss", **kwargs
    )
    with pytest.raises(MisconfigurationException, match=r"criterion='PQ'\) needs this epoch's training loss"):
        fit(es, [1.0, 0.9, 0.8, 0.7], tmp_path, **setting.get("trainer", {}))


@pytest.mark.parametrize(
    "name", ["_run_early_stopping_check", "_evaluate_stopping_criteria", "_validate_condition_metric"]
)
def test_a_renamed_lightning_method_fails_at_setup_with_a_clear_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's hooks call these methods by name; if a Lightning release renamed one, ours would silently never
    run (or fail at the first check, after training started)."""
    monkeypatch.delattr(LightningEarlyStopping, name)  # what a rename in Lightning looks like from here
    es = epochkit.EarlyStopping(monitor="val_loss")
    with pytest.raises(MisconfigurationException, match=rf"Lightning \S+ has no \['{name}'\]\. Please report it"):
        fit(es, [1.0, 0.9], tmp_path)
    assert es.best_epoch == -1  # before any training


def test_each_fit_warns_once_about_a_missing_metric(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_los", strict=False)
    for run in ("first", "second"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fit(es, [1.0, 0.9], tmp_path / run)
        assert len([w for w in record if "a check found no `val_los`" in str(w.message)]) == 1, run


def test_the_extra_defaults_are_the_signatures() -> None:
    """With every keyword-only argument at its default, the callback is Lightning's (its state_dict keys)."""
    signature = inspect.signature(epochkit.EarlyStopping.__init__)
    defaults = {n: p.default for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert defaults == _EXTRA_DEFAULTS and len(defaults) == 11
    es = epochkit.EarlyStopping(monitor="val_loss", **defaults)
    assert not es._extras_in_use
    assert list(es.state_dict()) == list(LightningEarlyStopping(monitor="val_loss").state_dict())
