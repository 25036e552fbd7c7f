"""Every public constructor and ``fit`` argument, fed its wrong values: a clear error naming the argument and the
value, raised before anything is written (the working directory is the test's empty ``tmp_path``).

EarlyStopping's Lightning arguments are not here: it accepts every value Lightning's class accepts, with Lightning's
meaning (tests/stopping/test_lightning_parity.py); its own arguments are.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import epochkit
from epochkit import CrossValidator, EarlyStopping, InitAudit, LRWarmup, ShuffleAudit, WeightReset, schedules
from epochkit.cv import RayExecutor
from epochkit.demo import DigitsClassifier, DigitsDataModule
from tests.helpers import QUIET, RegressionDataModule, RegressionModule, quiet_trainer

NAN, INF = math.nan, math.inf


def _schedule(name: str, **defaults: Any) -> Callable[..., Any]:
    return lambda **k: getattr(schedules, name)(**({"optimizer": _optimizer()} | defaults | k))


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _constant(optimizer: torch.optim.Optimizer) -> Any:
    return schedules.warmup_constant(optimizer, 2)


def _cv_fit(**kwargs: Any) -> Any:
    arguments = {"model": RegressionModule(), "datamodule": RegressionDataModule(), "trainer_kwargs": {}} | kwargs
    return CrossValidator(2, root_dir="cv").fit(**arguments)


BUILDERS: dict[str, Callable[..., Any]] = {
    "LRWarmup": lambda **k: LRWarmup(**({"steps": 10} if not {"steps", "epochs", "fraction"} & set(k) else {}), **k),
    "EarlyStopping": lambda **k: EarlyStopping(**({"monitor": "val_loss"} | k)),
    "EarlyStopping(criterion='GL')": lambda **k: EarlyStopping(**({"monitor": "val_loss", "criterion": "GL"} | k)),
    "ShuffleAudit": lambda **k: ShuffleAudit(**k),
    "InitAudit": lambda **k: InitAudit(**k),
    "CrossValidator": lambda **k: CrossValidator(**k),
    "CrossValidator.fit": _cv_fit,
    "WeightReset": lambda **k: WeightReset(**k),
    "RayExecutor": lambda **k: RayExecutor(**k),
    "warmup_cosine": _schedule("warmup_cosine", warmup_steps=2, total_steps=10),
    "warmup_polynomial": _schedule("warmup_polynomial", warmup_steps=2, total_steps=10),
    "warmup_inverse_sqrt": _schedule("warmup_inverse_sqrt", warmup_steps=2),
    "warmup_stable_decay": _schedule("warmup_stable_decay", warmup_steps=2, decay_steps=3, total_steps=10),
    "preview": lambda **k: schedules.preview(
        **({"make_scheduler": lambda o: schedules.warmup_constant(o, 2), "steps": 5} | k)
    ),
    "DigitsDataModule": lambda **k: DigitsDataModule(**k),
    "DigitsClassifier": lambda **k: DigitsClassifier(**k),
}

BAD: dict[str, dict[str, list[Any]]] = {
    "LRWarmup": {
        "steps": [0, -3, 2.5, "tuned", True, NAN],
        "epochs": [0, -1.0, NAN, INF, "1"],
        "fraction": [0, 1.5, NAN, -0.1, "half"],
        "shape": ["exp", None],
        "start_factor": [1.0, -0.1, NAN, "0"],
        "log_lr": ["yes", 1],
    },
    "EarlyStopping": {
        "monitor": [None, "", 3],
        "restore_best_weights": ["best", 2],
        "start_from_epoch": [-1, 1.5, "2"],
        "baseline": ["x", NAN],
        "min_delta_mode": ["pct"],
        "smoothing": ["avg", True],
        "smoothing_window": [0, -1, 2.5],
        "criterion": ["GLX", None],
        "alpha": [-1.0, NAN, "a"],
        "strip_length": [0, 1.5],
        "successive_strips": [0, -2],
        "train_monitor": [3, ""],
    },
    "EarlyStopping(criterion='GL')": {"alpha": [INF, 0.0]},
    "ShuffleAudit": {
        "on_issue": ["explode", None],
        "fingerprints": ["yes"],
        "max_samples": [0, -1, 2.5],
        "ignore": ["sorted_labels", ["no_such_finding"]],
        "escalate": ["weak_mixing", ["order_unchanged"]],
        "images": ["yes", 1, "png"],
        "sample_ids": ["", 2.5],
    },
    "InitAudit": {
        "on_issue": ["explode", None, True],
        "steps": [0, -1, 2.5, "10", True],
        "dead_units": ["yes", 1, None],
    },
    "CrossValidator": {
        "n_splits": [1, 0, -2, 2.5, "5", True],
        "splitter": [3, "kfold"],
        "stratify": ["yes", 1],
        "seed": [-1, 1.5, "0", None, 2**40],
        "reset": ["zero", None],
        "root_dir": [3, None, ""],
        "overwrite": ["yes"],
        "predict": ["yes", 2],
        "metric_modes": [{"val_acc": "up"}, ["val_acc"]],
        "resume_checkpoints": ["yes"],
        "seed_folds": ["yes"],
        "verbose": ["yes"],
        "labels": [3.5],
        "groups": [3.5],
        "executor": ["ray", 2],
    },
    "CrossValidator.fit": {
        "model": ["model", torch.nn.Linear(2, 2)],
        "datamodule": [None, [1, 2]],
        "trainer_kwargs": [["max_epochs", 1], {"callbacks": "x"}, {"callbacks": [3]}],
        "trainer_factory": [3],
    },
    "WeightReset": {"device": [3, "gpu9"]},
    "RayExecutor": {
        "address": [3, "", "  "],
        "cpus_per_fold": [0, -1, NAN, "2", True],
        "gpus_per_fold": [-1, 1.5, NAN, "1"],
        "max_concurrent": [0, -2, 1.5, "4"],
        "max_retries": [-1, 0.5, "2"],
        "schedule_timeout": [0, -5.0, NAN, "10"],
        "progress": ["yes", 1],
        "runtime_env": ["env", ["working_dir"]],
        "verbose": ["yes", 1],
    },
    "warmup_cosine": {
        "warmup_steps": [-1, 2.5, "3", 10],
        "total_steps": [0, -5],
        "cycles": [0, 1.5],
        "floor": [1.5, NAN, -0.1],
        "shape": ["exp"],
        "start_factor": [1.0, NAN],
    },
    "warmup_polynomial": {"power": [0, -1.0]},
    "warmup_inverse_sqrt": {"timescale": [0, -1]},
    "warmup_stable_decay": {"decay_steps": [0, 9], "decay_shape": ["exp"]},
    "preview": {"steps": [0, -1], "base_lr": [NAN, INF, 0.0, "1"]},
    "DigitsDataModule": {"batch_size": [0], "val_fraction": [0.0, 1.0]},
    "DigitsClassifier": {"hidden": [0], "dropout": [1.0]},
}

CASES = [(owner, arg, value) for owner, args in BAD.items() for arg, values in args.items() for value in values]


@pytest.mark.parametrize(("owner", "argument", "value"), CASES, ids=[f"{o}-{a}={v!r}" for o, a, v in CASES])
def test_bad_input_fails_clearly_and_writes_nothing(owner: str, argument: str, value: Any, tmp_path: Path) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        BUILDERS[owner](**{argument: value})
    message = str(caught.value)
    assert argument in message, f"{owner}({argument}={value!r}): the error does not name the argument: {message}"
    shown = {repr(value), str(value)} | ({"nan"} if isinstance(value, float) and math.isnan(value) else set())
    assert any(s in message for s in shown), (
        f"{owner}({argument}={value!r}): the error does not show the value: {message}"
    )
    assert list(tmp_path.iterdir()) == [], f"{owner}({argument}={value!r}) wrote {list(tmp_path.iterdir())}"


def test_every_public_constructor_has_bad_values() -> None:
    callbacks = [n for n in epochkit.__all__ if isinstance(getattr(epochkit, n), type)]
    # Nothing to configure: a result, two callbacks without arguments, and the audit's error and warning classes.
    takes_no_settings = {
        "CVResult",
        "DestroyProcessGroupAtExit",
        "InitAuditError",
        "InitAuditWarning",
        "SetEpoch",
        "ShuffleAuditError",
        "ShuffleAuditWarning",
    }
    missing = [n for n in callbacks if n not in BAD and n not in takes_no_settings]
    assert not missing, f"no bad-input rows for {missing}"


def test_a_logger_instance_in_trainer_kwargs_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"trainer_kwargs\['logger'\]"):
        _cv_fit(trainer_kwargs={"logger": CSVLogger(tmp_path / "logs")})
    assert list(tmp_path.iterdir()) == []


class _NoOptimizer(RegressionModule):
    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None


def _warmup_fit(warmup: LRWarmup, module: RegressionModule | None = None) -> pl.Trainer:
    trainer = quiet_trainer(None, [warmup], max_steps=12, limit_val_batches=0)
    trainer.fit(module or RegressionModule(), datamodule=RegressionDataModule(num_samples=64, batch_size=8))
    return trainer


def _numpy_seed_reaches_the_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    CrossValidator(2, seed=np.int64(3), root_dir=tmp_path / "cv", verbose=False).fit(
        RegressionModule(),
        RegressionDataModule(num_samples=16, batch_size=4),
        trainer_kwargs={**QUIET, "max_epochs": 1},
    )
    assert json.loads((tmp_path / "cv" / "cv_manifest.json").read_text())["config"]["seed"] == 3


def _huge_warmup_is_a_ramp_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warmup = LRWarmup(steps=10**12)
    with pytest.warns(UserWarning, match="the warmup lasts 1000000000000 optimizer steps, longer than this fit's 12"):
        _warmup_fit(warmup)
    assert warmup.steps_applied_ == [12]


def _epochs_1e300_warms_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warmup = LRWarmup(epochs=1e300)
    with pytest.warns(UserWarning, match="longer than this fit's 12"):
        _warmup_fit(warmup)
    assert warmup.steps_applied_ == [12]


def _no_optimizer_nothing_to_warm_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="epochkit.warmup"):
        _warmup_fit(LRWarmup(steps=5), _NoOptimizer())
    assert "LRWarmup: the module configured no optimizer; there is nothing to warm up." in caplog.text


# Arguments that validation accepts and that once failed later (or allocated without bound): each must run through.
ACCEPTED: dict[str, Callable[..., None]] = {
    "CrossValidator(seed=np.int64(3)) to the manifest": _numpy_seed_reaches_the_files,
    "LRWarmup(steps=10**12) on a 12-step fit": _huge_warmup_is_a_ramp_start,
    "LRWarmup(epochs=1e300)": _epochs_1e300_warms_up,
    "LRWarmup with configure_optimizers returning None": _no_optimizer_nothing_to_warm_up,
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_edge_arguments_run_through(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ACCEPTED[case](tmp_path, caplog)


def _labels_fn_of_the_wrong_length() -> None:
    audit = ShuffleAudit(labels=lambda batch: torch.zeros(3, dtype=torch.long))  # 3 labels for batches of 8
    trainer = quiet_trainer(None, [audit], max_epochs=2, limit_val_batches=0)
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=64, batch_size=8))


# Arguments only the data can refute: refused in the fit, at the first epoch's end, with the argument named.
REFUSED_IN_FIT: dict[str, tuple[Callable[[], None], str]] = {
    "ShuffleAudit(labels=fn) giving the wrong number of labels": (
        _labels_fn_of_the_wrong_length,
        r"ShuffleAudit\(labels=<function .*>\): it gave 24 labels for the 64 samples the train loader presented in "
        r"epoch 0: it must give one label per sample of the batch",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_IN_FIT))
def test_arguments_the_data_refutes_are_refused_in_the_fit(case: str) -> None:
    run, says = REFUSED_IN_FIT[case]
    with pytest.raises(ValueError, match=says):
        run()
