"""EarlyStopping with sharded models. Lightning's ``FSDPStrategy`` refuses the CPU, but its ``ModelParallelStrategy``
runs on one CPU process (gloo) with FSDP2's ``fully_shard``, whose parameters are DTensors: the real thing, tested
here. The FSDP paths run in ``benchmarks/gpu.py``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset

from epochkit import EarlyStopping
from epochkit.stopping.best_weights import host_copy_problem
from tests.helpers import quiet_trainer

SCRIPTED = [5.0, 4.0, 1.0, 3.0, 2.0]  # val_metric per epoch: the best is epoch 2, training goes on to epoch 4


class ShardedRegression(pl.LightningModule):
    """Two linear layers sharded with FSDP2's ``fully_shard`` in ``configure_model``; logs a scripted metric."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        fully_shard(self.net[0], mesh=mesh)
        fully_shard(self.net[2], mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_metric", torch.full((), SCRIPTED[self.current_epoch]))

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(32, 4, generator=gen), torch.randn(32, 1, generator=gen)), 8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=8)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class FullStates(Callback):
    """The full (gathered) state dict at the end of every training epoch, copied to the host."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states[trainer.current_epoch] = _full_state(trainer)


def _full_state(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v.detach().clone() for k, v in get_model_state_dict(trainer.strategy.model, options=options).items()}


@pytest.fixture
def process_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A free port for the one-process gloo group the strategy starts, and that group destroyed afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _trainer(root: Path, callbacks: list[Callback]) -> pl.Trainer:
    return quiet_trainer(
        root,
        callbacks,
        devices=1,
        strategy=ModelParallelStrategy(),
        max_epochs=len(SCRIPTED),
        enable_checkpointing=True,
    )


@pytest.mark.usefixtures("process_group")
def test_host_copy_restore_under_model_parallel_fails_at_setup(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [EarlyStopping("val_metric", restore_best_weights=True)])
    with pytest.raises(MisconfigurationException, match=r"ModelParallelStrategy shards the parameters into DTensors"):
        trainer.fit(ShardedRegression())
    assert trainer.global_step == 0  # refused before any training


@pytest.mark.usefixtures("process_group")
def test_checkpoint_restore_under_model_parallel_restores_the_best_epoch(tmp_path: Path) -> None:
    stop = EarlyStopping("val_metric", patience=10, restore_best_weights="checkpoint")
    states = FullStates()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_metric", save_top_k=1)
    trainer = _trainer(tmp_path, [stop, ckpt, states])
    trainer.fit(ShardedRegression())
    assert stop.best_epoch == 2 and stop.restored_epoch == 2 and trainer.current_epoch == len(SCRIPTED)
    final = _full_state(trainer)
    assert all(torch.equal(final[k], states.states[2][k]) for k in final)
    assert not all(torch.equal(final[k], states.states[4][k]) for k in final)  # the weights did move after epoch 2


def test_the_strategies_a_host_copy_cannot_serve() -> None:
    assert host_copy_problem(SingleDeviceStrategy("cpu"), 1) is None
    assert host_copy_problem(FSDPStrategy(), 1) is None  # torch switches one process to NO_SHARD
    assert host_copy_problem(FSDPStrategy(sharding_strategy="NO_SHARD"), 4) is None
    assert "use_orig_params=False" in str(host_copy_problem(FSDPStrategy(use_orig_params=False), 1))
    assert "'FULL_SHARD') on 4 processes" in str(host_copy_problem(FSDPStrategy(), 4))
    hybrid = FSDPStrategy(sharding_strategy="HYBRID_SHARD", auto_wrap_policy={nn.Linear})
    assert "'HYBRID_SHARD') on 8 processes" in str(host_copy_problem(hybrid, 8))
    assert "DTensors" in str(host_copy_problem(ModelParallelStrategy(), 1))
