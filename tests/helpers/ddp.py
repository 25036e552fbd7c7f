"""Run a real 2-process DDP fit on CPU (``ddp_spawn``, gloo) and bring back what each rank saw.

Spawned workers do not send callback state back to the test process, so a reporting callback writes one file per
rank at the end of fit (and when fit fails) and :func:`fit_ddp` reads them after the workers exit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from epochkit import DestroyProcessGroupAtExit
from tests.helpers.trainers import quiet_trainer

Probe = Callable[[pl.Trainer, pl.LightningModule], dict[str, Any]]

current_test: Any = None  # the running pytest item, set by tests/conftest.py


@dataclass
class RankReport:
    """What one rank saw when fit ended."""

    rank: int
    world_size: int
    global_step: int
    current_epoch: int
    should_stop: bool
    callback_metrics: dict[str, float]
    callback_states: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class _RankReporter(Callback):
    """Writes a :class:`RankReport` for its rank to ``out_dir/rank{r}.pt``."""

    def __init__(self, out_dir: str, probe: Probe | None) -> None:
        self.out_dir = out_dir
        self.probe = probe

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: str | None) -> None:
        report = RankReport(
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            global_step=trainer.global_step,
            current_epoch=trainer.current_epoch,
            should_stop=trainer.should_stop,
            callback_metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
            callback_states={
                cb.state_key: cb.state_dict() for cb in trainer.callbacks if not isinstance(cb, _RankReporter)
            },
            model_state={k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            extra=self.probe(trainer, pl_module) if self.probe is not None else {},
            error=error,
        )
        torch.save(report.__dict__, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._write(trainer, pl_module, f"{type(exception).__name__}: {exception}")


def fit_ddp(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    root: Path,
    callbacks: Sequence[Callback] = (),
    probe: Probe | None = None,
    ckpt_path: Path | None = None,
    **trainer_kwargs: Any,
) -> list[RankReport]:
    """Fit ``model`` on 2 CPU processes with ``strategy="ddp_spawn"`` and return one report per rank, by rank.

    Args:
        model: The module to fit; it is pickled into each worker.
        datamodule: The data; Lightning adds a ``DistributedSampler`` to its loaders.
        root: A fresh directory (``tmp_path``) for reports and logs.
        callbacks: Callbacks under test; their ``state_dict()`` at fit end lands in ``callback_states``.
        probe: A picklable (module-level) function called on each rank at fit end; its dict lands in ``extra``.
        ckpt_path: A checkpoint to resume from (``Trainer.fit(ckpt_path=...)``).
        trainer_kwargs: Overrides of the Trainer defaults below (``max_epochs=1``, no logger, no checkpointing).

    Raises:
        AssertionError: If a rank wrote no report, so a silent worker cannot pass a test.
    """
    if current_test is not None and current_test.get_closest_marker("ddp") is None:
        raise AssertionError(f"{current_test.nodeid} starts DDP processes: mark it `@pytest.mark.ddp` (make stress)")
    out_dir = Path(root) / "rank_reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"strategy": "ddp_spawn", "devices": 2, "max_epochs": 1, **trainer_kwargs}
    cleanup = DestroyProcessGroupAtExit()  # else gloo can abort a finished worker at exit (see its docstring)
    trainer = quiet_trainer(root, [*callbacks, _RankReporter(str(out_dir), probe), cleanup], **kwargs)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    reports = []
    for rank in range(kwargs["devices"]):
        path = out_dir / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no report to {path}"
        reports.append(RankReport(**torch.load(path, weights_only=False)))
    return reports
