"""Callback state in a checkpoint, tampered with or mismatched: every case a row, refused when the checkpoint is
loaded (before any step is trained), by an error naming the callback, the checkpoint and the entry."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from epochkit import EarlyStopping, LRWarmup, SetEpoch, ShuffleAudit
from epochkit._state import CallbackStateError
from tests.helpers import RegressionDataModule, RegressionModule, quiet_trainer


def _callbacks(warmup_steps: int = 10) -> list[Callback]:
    return [
        LRWarmup(steps=warmup_steps),
        EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
        ShuffleAudit(),
        SetEpoch(),
    ]


class StepCounter(Callback):
    """Counts the training steps of a fit: a refused resume trains none."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.batches += 1


def _fit(root: Path, epochs: int, callbacks: list[Callback], ckpt: Path | None = None) -> pl.Trainer:
    torch.manual_seed(0)
    trainer = quiet_trainer(root, callbacks, max_epochs=epochs)
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(), ckpt_path=ckpt, weights_only=True)
    return trainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The checkpoint of a 2-epoch fit with every stateful epochkit callback."""
    root = tmp_path_factory.mktemp("base")
    trainer = _fit(root, 2, _callbacks())
    trainer.save_checkpoint(root / "last.ckpt", weights_only=False)
    return torch.load(root / "last.ckpt", weights_only=True)


def _key(index: int) -> str:
    return _callbacks()[index].state_key


def _set(index: int, entry: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def tamper(ckpt: dict[str, Any]) -> None:
        ckpt["callbacks"][_key(index)][entry] = value

    return tamper


def _replace(index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def tamper(ckpt: dict[str, Any]) -> None:
        ckpt["callbacks"][_key(index)] = value

    return tamper


def _wrong_best_weights(ckpt: dict[str, Any]) -> None:
    state = ckpt["callbacks"][_key(1)]
    assert state.get("best_weights"), "the fit kept no host copy of the best weights"
    state["best_weights"] = {name: torch.zeros(3, 3) for name in state["best_weights"]}


WARMUP, STOPPING, AUDIT, SET_EPOCH = 0, 1, 2, 3
# (name, tamper(checkpoint), what the error says after "<Callback>: its state in the checkpoint <path> ")
ROWS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("LRWarmup steps_applied negative", _set(WARMUP, "steps_applied", [-3]), r"has steps_applied=\[-3\], which must"),
    ("LRWarmup steps_applied far negative", _set(WARMUP, "steps_applied", [-100]), r"has steps_applied=\[-100\]"),
    ("LRWarmup steps_applied a string", _set(WARMUP, "steps_applied", "16"), r"has steps_applied='16'"),
    ("LRWarmup warmup_steps zero", _set(WARMUP, "warmup_steps", [[0]]), r"has warmup_steps=\[\[0\]\]"),
    ("LRWarmup state a list", _replace(WARMUP, [16]), r"is a list, not a mapping"),
    ("LRWarmup steps for two optimizers", _set(WARMUP, "steps_applied", [5, 5]), r"has step counts for 2 optimizer"),
    ("EarlyStopping wait_count a string", _set(STOPPING, "wait_count", "2"), r"has wait_count='2', which must"),
    ("EarlyStopping history not numbers", _set(STOPPING, "history", ["x"]), r"has history=\['x'\]"),
    ("EarlyStopping stopping_reason out of range", _set(STOPPING, "stopping_reason", 42), r"has stopping_reason=42"),
    ("EarlyStopping best weights of the wrong shape", _wrong_best_weights, r"best weights .* do not fit the module"),
    ("ShuffleAudit verdicts a string", _set(AUDIT, "verdicts", "ok"), r"has verdicts='ok', which must be"),
    ("ShuffleAudit previous_epoch a string", _set(AUDIT, "previous_epoch", "1"), r"has previous_epoch='1'"),
    ("SetEpoch epochs a list", _set(SET_EPOCH, "epochs", [1]), r"has epochs=\[1\], which must be"),
    ("SetEpoch epochs negative", _set(SET_EPOCH, "epochs", {"train:X": -1}), r"has epochs=\{'train:X': -1\}"),
]


@pytest.mark.parametrize(("tamper", "says"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_tampered_callback_state_is_refused_at_load_naming_callback_and_checkpoint(
    tmp_path: Path, checkpoint: dict[str, Any], tamper: Callable[[dict[str, Any]], None], says: str
) -> None:
    ckpt = {
        **checkpoint,
        "callbacks": {k: dict(v) if isinstance(v, dict) else v for k, v in checkpoint["callbacks"].items()},
    }
    tamper(ckpt)
    path = tmp_path / "tampered.ckpt"
    torch.save(ckpt, path)
    counter = StepCounter()
    with pytest.raises(CallbackStateError, match=rf"(LRWarmup|EarlyStopping|ShuffleAudit|SetEpoch): .*{path}.*") as err:
        _fit(tmp_path, 3, [*_callbacks(), counter], ckpt=path)
    assert re.search(says, str(err.value)), str(err.value)
    assert "resume from another checkpoint, or start the fit without `ckpt_path`" in str(err.value)
    assert counter.batches == 0


def test_resuming_with_another_warmup_length_warms_up_again_and_says_so(
    tmp_path: Path, checkpoint: dict[str, Any]
) -> None:
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    with pytest.warns(UserWarning, match=r"holds the state of LRWarmup\{'steps': 10.*not of LRWarmup\{'steps': 20"):
        _fit(tmp_path, 3, _callbacks(warmup_steps=20), ckpt=path)
