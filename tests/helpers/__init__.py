"""Shared test parts: real models and datamodules, a 2-process DDP runner and a TensorBoard reader."""

from tests.helpers.ddp import RankReport, fit_ddp
from tests.helpers.models import DigitsClassifier, DigitsDataModule, RegressionDataModule, RegressionModule
from tests.helpers.tensorboard import TensorBoardRun, read_plugin_summaries, read_tensorboard

__all__ = [
    "DigitsClassifier",
    "DigitsDataModule",
    "RankReport",
    "RegressionDataModule",
    "RegressionModule",
    "TensorBoardRun",
    "fit_ddp",
    "read_plugin_summaries",
    "read_tensorboard",
]
