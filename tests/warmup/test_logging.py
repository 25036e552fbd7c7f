"""The warmup curve reaches TensorBoard even when the warmup is shorter than ``log_every_n_steps``."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from epochkit import LRWarmup
from tests.helpers import RegressionDataModule, read_tensorboard
from tests.warmup.test_callback import BASE_LR, SchedModule, _trainer


@pytest.mark.parametrize(("every", "steps"), [(50, [0, 9, 19, 29, 39]), (15, [0, 9, 14, 19, 29, 39])])
def test_a_warmup_shorter_than_log_every_n_steps_draws_its_curve(tmp_path: Path, every: int, steps: list[int]) -> None:
    # 40 steps of warmup in an 80-step fit: Lightning logs at steps 49 and 99 (every=50), after the warmup; the
    # warmup still logs its first and last step and the quarter points, besides Lightning's own steps (every=15).
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _trainer(tmp_path, [LRWarmup(steps=40)], max_epochs=2, logger=logger, log_every_n_steps=every)
    trainer.fit(SchedModule(), datamodule=RegressionDataModule(num_samples=160, batch_size=4, shuffle=False))
    run = read_tensorboard(tmp_path / "tb")
    for tag in ("warmup/lr", "warmup/factor"):
        assert [step for step, _ in run.scalars[tag]] == steps, tag
    assert run.scalar_values("warmup/factor") == pytest.approx([(k + 1) / 40 for k in steps])
    assert run.scalar_values("warmup/lr") == pytest.approx([BASE_LR * (k + 1) / 40 for k in steps])
