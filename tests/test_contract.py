"""One contract for every callback epochkit exports (skorch's rule): it pickles, its ``state_dict`` round-trips
through a real checkpoint, and it builds from a LightningCLI YAML ``trainer.callbacks`` entry for a real fit. Every
callback follows the one lifecycle of :mod:`epochkit._callback`: each attribute its class lists (class-level
annotations) exists right after ``__init__`` and right after ``setup``, and each Lightning hook or method it overrides
is marked ``@override``.

A callback lands in ``epochkit.__all__`` only with a :class:`Case` here; Lightning's own ``EarlyStopping`` is the
control that proves the harness works on its own.
"""

from __future__ import annotations

import inspect
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.cli import LightningCLI

import epochkit
from epochkit import LRWarmup
from epochkit.cv.callbacks import FoldMonitor, OOFPredictor, ResumeCheckpoint
from epochkit.cv.reset import weights_checksum
from epochkit.demo import DigitsClassifier, DigitsDataModule
from tests.helpers import quiet_trainer


@dataclass(frozen=True)
class Case:
    """A callback class and the constructor arguments the contract builds it with."""

    cls: type[Callback]
    init_args: dict[str, Any] = field(default_factory=dict)

    @property
    def class_path(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    @property
    def id(self) -> str:
        return f"{self.class_path}{self.init_args}"


CASES: list[Case] = [
    Case(LightningEarlyStopping, {"monitor": "val_loss", "patience": 2, "mode": "min"}),
    Case(LRWarmup, {"steps": 3, "shape": "cosine", "start_factor": 0.1}),
    Case(LRWarmup, {"steps": "untuned"}),
    Case(LRWarmup, {"fraction": 0.5, "log_lr": False}),
    Case(
        epochkit.EarlyStopping,
        {"monitor": "val_loss", "restore_best_weights": True, "baseline": 5.0, "patience": 1}
        | {"min_delta_mode": "rel", "smoothing": "ema", "smoothing_window": 3, "start_from_epoch": 0},
    ),
    Case(
        epochkit.EarlyStopping,
        {"monitor": "val_loss", "criterion": "PQ", "alpha": 2.0, "strip_length": 1, "train_monitor": "train_loss"},
    ),
    Case(epochkit.DestroyProcessGroupAtExit),
    Case(epochkit.ShuffleAudit, {"on_issue": "raise", "labels": 1, "max_samples": 100000, "ignore": ["sorted_labels"]}),
    Case(epochkit.ShuffleAudit, {"escalate": ["weak_mixing", "correlated_batches"], "images": False}),
    Case(epochkit.SetEpoch, {}),
    Case(epochkit.InitAudit, {"on_issue": "raise", "steps": 2, "dead_units": True}),
    Case(epochkit.InitAudit, {"steps": 50, "dead_units": False}),
]


def listed_attributes(cls: type) -> list[str]:
    """The state attributes ``cls`` lists: the class-level annotations of its epochkit classes (ClassVars aside)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass.__module__.startswith("epochkit"):
            for name, hint in vars(klass).get("__annotations__", {}).items():
                if "ClassVar" not in str(hint) and name not in names:
                    names.append(name)
    return names


def missing_attributes(callback: Callback) -> list[str]:
    return [name for name in listed_attributes(type(callback)) if not hasattr(callback, name)]


def overrides_without_marker(cls: type) -> list[str]:
    """Methods and properties of ``cls``'s epochkit classes that override a base class's, without ``@override``."""
    unmarked = []
    for i, klass in enumerate(cls.__mro__):
        if not klass.__module__.startswith("epochkit"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("__") or not any(name in vars(base) for base in cls.__mro__[i + 1 :]):
                continue
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if callable(function) and not getattr(function, "__override__", False):
                unmarked.append(f"{klass.__qualname__}.{name}")
    return unmarked


class AttributeProbe(Callback):
    """Listed after the callback under test, so its ``setup`` runs right after the other's: checks its attributes
    there, and again at fit start (after every ``setup``: Lightning moves ``Checkpoint`` callbacks last)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check(trainer, f"setup({stage!r})")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, "every setup")

    @staticmethod
    def _check(trainer: pl.Trainer, when: str) -> None:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            missing = missing_attributes(callback)
            assert not missing, f"{type(callback).__name__} lacks {missing} right after {when}"


def _exported_callbacks() -> list[type[Callback]]:
    objects = (getattr(epochkit, name) for name in epochkit.__all__)
    return [obj for obj in objects if inspect.isclass(obj) and issubclass(obj, Callback)]


def _assert_same_state(a: Any, b: Any, path: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {a.keys()} != {b.keys()}"
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"  # a != a: both NaN


def test_every_exported_callback_has_a_contract_case() -> None:
    covered = {case.cls for case in CASES}
    missing = [cls.__name__ for cls in _exported_callbacks() if cls not in covered]
    assert not missing, f"exported callbacks without a contract Case: {missing}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_callback_pickles(case: Case) -> None:
    callback = case.cls(**case.init_args)
    assert not missing_attributes(callback), f"{case.id} lacks {missing_attributes(callback)} after __init__"
    clone = pickle.loads(pickle.dumps(callback))
    assert type(clone) is case.cls
    assert clone.state_key == callback.state_key
    _assert_same_state(clone.state_dict(), callback.state_dict())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_callback_builds_from_lightning_cli_yaml_and_round_trips_its_state(case: Case, tmp_path: Path) -> None:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 4,
            "limit_val_batches": 2,
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": case.class_path, "init_args": case.init_args},
                {"class_path": "tests.test_contract.AttributeProbe"},
            ],
        },
        "model": {"class_path": "epochkit.demo.DigitsClassifier"},
        "data": {"class_path": "epochkit.demo.DigitsDataModule", "init_args": {"batch_size": 32}},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    cli = LightningCLI(args=["fit", "--config", str(config_path)], save_config_kwargs={"overwrite": True})

    assert cli.trainer.state.finished, cli.trainer.state
    built = [cb for cb in cli.trainer.callbacks if type(cb) is case.cls]
    assert len(built) == 1, f"{case.id} not among the Trainer's callbacks: {cli.trainer.callbacks}"
    callback = built[0]
    for name, value in case.init_args.items():
        assert getattr(callback, name) == value, f"{case.id}.{name} is {getattr(callback, name)!r}, not {value!r}"

    # The state after a real fit survives a real checkpoint file and loads into a fresh instance.
    ckpt_path = tmp_path / "contract.ckpt"
    cli.trainer.save_checkpoint(ckpt_path)
    checkpoint = torch.load(ckpt_path, weights_only=True)  # every callback's state is tensors and plain types
    if not callback.state_dict():  # a stateless callback: Lightning stores nothing, there is nothing to resume
        assert callback.state_key not in checkpoint["callbacks"]
        return
    assert callback.state_key in checkpoint["callbacks"], sorted(checkpoint["callbacks"])
    fresh = case.cls(**case.init_args)
    assert fresh.state_key == callback.state_key
    buffer = io.BytesIO()
    torch.save(checkpoint["callbacks"][callback.state_key], buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same_state(fresh.state_dict(), callback.state_dict())


@pytest.mark.parametrize("cls", sorted({case.cls for case in CASES} - {LightningEarlyStopping}, key=str))
def test_every_lightning_override_is_marked(cls: type[Callback]) -> None:
    assert not overrides_without_marker(cls), "mark these with typing_extensions.override"


def test_the_contract_checks_can_fail() -> None:
    """The two lifecycle checks above, on classes made to break them."""

    class Unlisted(Callback):
        __module__ = "epochkit.fake"
        made_in_setup_: list[int]

        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            self.made_in_setup_ = []

    assert missing_attributes(Unlisted()) == ["made_in_setup_"]
    assert overrides_without_marker(Unlisted) == [f"{Unlisted.__qualname__}.setup"]


def test_the_cross_validator_callbacks_follow_the_lifecycle(tmp_path: Path) -> None:
    """Not exported (CrossValidator adds them to every fold), held to the same lifecycle in a real fit."""
    model = DigitsClassifier()
    checksum = weights_checksum(model)
    callbacks: list[Callback] = [
        FoldMonitor(0, "plan", checksum, str(tmp_path / "history.json"), str(tmp_path / "kept.json")),
        ResumeCheckpoint(str(tmp_path / "last.ckpt")),
    ]
    for callback in [*callbacks, OOFPredictor(str(tmp_path))]:
        assert not missing_attributes(callback), type(callback).__name__
        assert not overrides_without_marker(type(callback)), type(callback).__name__
    trainer = quiet_trainer(
        tmp_path,
        [*callbacks, AttributeProbe()],
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        enable_checkpointing=True,  # FoldMonitor and ResumeCheckpoint are Checkpoint callbacks
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.state.finished
