"""restore_best_weights: the module ends fit with the weights of the best check, from host memory or a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

import epochkit
from epochkit.stopping import HostWeights
from tests.helpers import read_tensorboard
from tests.stopping.scripted import fit


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("seq", "patience", "best_epoch", "stops"),
    [
        ([1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9], 3, 2, True),  # stops at epoch 5
        ([1.0, 0.8, 0.5, 0.6, 0.7, 0.65], 10, 2, False),  # runs to max_epochs
    ],
)
def test_host_copy_is_loaded_at_fit_end(
    seq: list[float], patience: int, best_epoch: int, stops: bool, tmp_path: Path
) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    _, trace, model = fit(es, seq, tmp_path)
    last = max(trace.weights)
    assert (last < len(seq) - 1) is stops
    assert not _same(trace.weights[last], trace.weights[best_epoch])  # the weights did move after the best
    assert _same(model.state_dict(), trace.weights[best_epoch])
    assert es.restored_epoch == es.best_epoch == best_epoch


def test_without_restore_the_final_weights_stay(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3)
    _, trace, model = fit(es, [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9], tmp_path)
    assert _same(model.state_dict(), trace.weights[max(trace.weights)])
    assert es.restored_epoch == -1


def test_checkpoint_mode_reloads_the_model_checkpoints_best_file(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights="checkpoint")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min", save_top_k=1)
    _, trace, model = fit(
        es,
        [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9],
        tmp_path,
        extra_callbacks=[ckpt],
        enable_checkpointing=True,
        logger=TensorBoardLogger(tmp_path, name="tb"),
    )
    assert Path(ckpt.best_model_path).name.startswith("epoch=2")
    assert _same(model.state_dict(), trace.weights[2])
    assert es.restored_epoch == 2
    run = read_tensorboard(tmp_path / "tb")
    assert run.scalar_values("early_stopping/val_loss/restored_epoch") == [2.0]
    assert run.text_values("early_stopping/val_loss/reason")[-1].endswith("Restored the weights of epoch 2.")
    assert not es.state_dict().get("best_weights")  # no copy held in memory or in checkpoints


def test_checkpoint_mode_without_a_matching_model_checkpoint_fails_at_setup(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", restore_best_weights="checkpoint")
    other = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max")
    with pytest.raises(MisconfigurationException, match=r"monitor='val_loss', mode='min'.*monitor='val_acc'") as err:
        fit(es, [1.0, 0.9], tmp_path, extra_callbacks=[other], enable_checkpointing=True)
    assert "restore_best_weights=True" in str(err.value)
    assert es.best_epoch == -1  # failed before training


def test_nothing_to_restore_warns_and_keeps_the_final_weights(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", restore_best_weights=True, start_from_epoch=5)
    with pytest.warns(UserWarning, match="no best weights"):
        _, trace, model = fit(es, [1.0, 0.9, 0.8], tmp_path)
    assert _same(model.state_dict(), trace.weights[2])


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("count", torch.zeros(()))


def test_host_weights_reuses_its_buffers_and_stores_tied_weights_once() -> None:
    module = _Tied()
    copy = HostWeights()
    copy.capture(module)
    pointers = [t.data_ptr() for t in copy.state().values()]
    # weight (16) + 2 biases (4 each) + count (1), float32; the tied weight is held once
    assert copy.nbytes == (16 + 4 + 4 + 1) * 4
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    copy.capture(module)
    assert [t.data_ptr() for t in copy.state().values()] == pointers  # copied in place, no new allocation
    expected = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.a.weight.zero_()
        module.count.fill_(3.0)
    copy.load_into(module)
    assert _same(module.state_dict(), expected)
    assert module.b.weight is module.a.weight
    restored = HostWeights()
    restored.load_state(copy.state())
    assert restored.nbytes == copy.nbytes and _same(restored.state(), copy.state())
