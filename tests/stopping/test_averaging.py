"""restore_best_weights with weight averaging: the weights that were evaluated are the ones restored.

Lightning's ``WeightAveraging`` callbacks swap the averaged weights into the module for validation and back after it,
and copy them into the module at train end; the module's own validation_step is the witness of what was evaluated.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, WeightAveraging
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import epochkit
from epochkit.stopping import HostWeights
from tests.helpers import RegressionDataModule, quiet_trainer
from tests.stopping.scripted import FAST, ScriptedModule

SEQ = [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9]  # best at epoch 2; patience 3 stops at epoch 5
BEST = 2


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Witness(ScriptedModule):
    """Records the weights its validation_step runs with (what a validation metric describes) and the training
    weights at the end of each training epoch."""

    def __init__(self, val: list[float], train: list[float] | None = None) -> None:
        super().__init__(val, train)
        self.evaluated: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.trained: dict[int, dict[str, torch.Tensor]] = {}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.evaluated.setdefault(self.current_epoch, []).append(_state(self))
        super().validation_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.trained[self.current_epoch] = _state(self)
        super().on_train_epoch_end()  # logs train_err when a training script is given


def _ema_at_epoch_ends() -> WeightAveraging:
    # Updated only at training epoch ends, i.e. after validation and, if it comes first, before the check.
    return EMAWeightAveraging(decay=0.5, update_every_n_steps=0, update_starting_at_epoch=0)


def _fit(es: epochkit.EarlyStopping, averager: WeightAveraging, es_first: bool, root: Path, **kwargs: Any) -> Any:
    callbacks: list[pl.Callback] = [es, averager] if es_first else [averager, es]
    extra = kwargs.pop("extra", [])
    train = kwargs.pop("train", None)
    trainer = quiet_trainer(
        root, [*callbacks, *extra], **{**FAST, "limit_train_batches": 3, **kwargs, "max_epochs": len(SEQ)}
    )
    pl.seed_everything(0, verbose=False)
    model = Witness(SEQ, train)
    trainer.fit(model, datamodule=RegressionDataModule(num_samples=24, batch_size=8))
    return trainer, model


@pytest.mark.parametrize("check_on_train_epoch_end", [True, False], ids=["train_epoch_end", "validation_end"])
@pytest.mark.parametrize("es_first", [True, False], ids=["es_first", "averager_first"])
@pytest.mark.parametrize("make_averager", [WeightAveraging, _ema_at_epoch_ends], ids=["swa_per_step", "ema_per_epoch"])
def test_the_model_ends_with_the_averaged_weights_of_the_best_epoch(
    make_averager: Any, es_first: bool, check_on_train_epoch_end: bool, tmp_path: Path
) -> None:
    es = epochkit.EarlyStopping(
        monitor="val_loss", patience=3, restore_best_weights=True, check_on_train_epoch_end=check_on_train_epoch_end
    )
    trainer, model = _fit(es, make_averager(), es_first, tmp_path)
    assert (es.stopped_epoch, es.best_epoch, es.restored_epoch) == (5, BEST, BEST)
    (evaluated_at_best,) = model.evaluated[BEST]
    assert not _same(evaluated_at_best, model.trained[BEST])  # averaging made a difference ...
    assert not _same(evaluated_at_best, model.evaluated[5][0])  # ... and the average moved on after the best
    assert _same(_state(model), evaluated_at_best)

    # The averaging callback's own model holds them too: a later validation evaluates the best weights again.
    trainer.validate(model, datamodule=RegressionDataModule(num_samples=24, batch_size=8), verbose=False)
    assert _same(model.evaluated[trainer.current_epoch][-1], evaluated_at_best)


@pytest.mark.parametrize(
    ("make_averager", "check_on_train_epoch_end", "validation_copies"),
    [
        (WeightAveraging, True, 0),  # averaged per step: nothing moves the average between validation and check
        (_ema_at_epoch_ends, False, 0),  # the check runs at validation end, before any update
        (_ema_at_epoch_ends, True, 6),  # updated at each epoch end, before a train-epoch-end check: copied each time
    ],
    ids=["swa_per_step", "ema_per_epoch-validation_end", "ema_per_epoch-train_epoch_end"],
)
def test_the_validated_weights_are_copied_only_where_they_could_be_lost(
    make_averager: Any,
    check_on_train_epoch_end: bool,
    validation_copies: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second host copy at every validation is made only when the averaging callback can update its average
    between the validation and the check; otherwise the check copies the average itself, at improvements only."""
    sources: list[str] = []
    capture = HostWeights.capture

    def counting(self: HostWeights, module: nn.Module) -> None:
        sources.append(type(module).__name__)
        capture(self, module)

    monkeypatch.setattr(HostWeights, "capture", counting)
    es = epochkit.EarlyStopping(
        monitor="val_loss", patience=3, restore_best_weights=True, check_on_train_epoch_end=check_on_train_epoch_end
    )
    _, model = _fit(es, make_averager(), True, tmp_path)
    assert (es.stopped_epoch, es.restored_epoch) == (5, BEST)
    assert _same(_state(model), model.evaluated[BEST][0])  # still the averaged best (see the test above)
    improvements = 3  # epochs 0, 1, 2 of 6 validated
    assert len(sources) == validation_copies + (0 if validation_copies else improvements)
    assert (es._validated_weights is None) is (validation_copies == 0)  # one host copy of the model, not two


def test_a_validation_before_the_epochs_last_step_checked_at_its_end_restores_what_it_evaluated(
    tmp_path: Path,
) -> None:
    """Validation after 2 of 3 training batches, the check at train epoch end: the step between them moves the
    average, so the evaluated weights are copied at validation end."""
    es = epochkit.EarlyStopping(
        monitor="val_loss", patience=3, restore_best_weights=True, check_on_train_epoch_end=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "the average moved" warning: it was foreseen
        _, model = _fit(es, WeightAveraging(), True, tmp_path, val_check_interval=2)
    assert (es.stopped_epoch, es.restored_epoch) == (5, BEST)
    (evaluated_at_best,) = model.evaluated[BEST]
    assert not _same(evaluated_at_best, model.trained[BEST])
    assert _same(_state(model), evaluated_at_best)


class _UpdatesWithoutSaying(WeightAveraging):
    """Updates its average at every epoch end but answers "no" when asked beforehand: what epochkit cannot foresee."""

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if epoch_idx is None:
            return False
        self._asked = getattr(self, "_asked", {})
        self._asked[epoch_idx] = self._asked.get(epoch_idx, 0) + 1
        return self._asked[epoch_idx] > 1  # the first question (ours) gets the wrong answer


def test_an_average_that_moved_unforeseen_before_the_check_is_warned_about(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    with pytest.warns(RuntimeWarning, match=r"measured on averaged weights that the averaging callback updated before"):
        _fit(es, _UpdatesWithoutSaying(), True, tmp_path)
    assert es.restored_epoch == BEST


@pytest.mark.parametrize("make_averager", [WeightAveraging, _ema_at_epoch_ends], ids=["swa_per_step", "ema_per_epoch"])
def test_a_training_metric_restores_the_training_weights_it_describes(make_averager: Any, tmp_path: Path) -> None:
    """A metric logged in training describes the training weights, not the averaged ones validation ran with."""
    es = epochkit.EarlyStopping(monitor="train_err", patience=3, restore_best_weights=True)
    _, model = _fit(es, make_averager(), True, tmp_path, train=SEQ)
    assert (es.stopped_epoch, es.best_epoch, es.restored_epoch) == (5, BEST, BEST)
    assert not _same(model.trained[BEST], model.evaluated[BEST][0])
    assert _same(_state(model), model.trained[BEST])


def test_two_averaging_callbacks_with_a_host_copy_fail_at_setup(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", restore_best_weights=True)
    with pytest.raises(MisconfigurationException, match=r"has 2 weight-averaging callbacks \(WeightAveraging, EMA"):
        _fit(es, WeightAveraging(), True, tmp_path, extra=[EMAWeightAveraging()])


def test_checkpoint_restore_with_an_averager_reloads_the_averaged_best(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights="checkpoint")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    _, model = _fit(es, WeightAveraging(), True, tmp_path, enable_checkpointing=True, extra=[checkpoint])
    assert Path(checkpoint.best_model_path).name.startswith(f"epoch={BEST}")
    assert es.restored_epoch == BEST
    assert _same(_state(model), model.evaluated[BEST][0])


class _WithOwnAverage(ScriptedModule):
    """A module keeping its own ``torch.optim.swa_utils.AveragedModel`` (EMA), as users do without the callback."""

    def __init__(self, val: list[float]) -> None:
        super().__init__(val)
        self.ema = AveragedModel(self.layer, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.layer)


def test_an_averaged_model_inside_the_module_is_restored_with_it(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    states: dict[int, dict[str, torch.Tensor]] = {}

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            states[trainer.current_epoch] = _state(pl_module)

    trainer = quiet_trainer(tmp_path, [Record(), es], **FAST, max_epochs=len(SEQ))
    pl.seed_everything(0, verbose=False)
    model = _WithOwnAverage(SEQ)
    trainer.fit(model, datamodule=RegressionDataModule(num_samples=16, batch_size=8))
    assert es.restored_epoch == BEST and any(k.startswith("ema.") for k in states[BEST])
    assert not _same(states[BEST], states[5])
    assert _same(_state(model), states[BEST])  # the module's weights and its average, both of the best epoch
