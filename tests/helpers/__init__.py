"""Shared test parts: the quiet Trainer, real models and datamodules, a 2-process DDP runner and a TensorBoard
reader."""

from tests.helpers.ddp import RankReport, fit_ddp
from tests.helpers.models import DigitsClassifier, DigitsDataModule, RegressionDataModule, RegressionModule
from tests.helpers.tensorboard import TensorBoardRun, read_plugin_summaries, read_tensorboard
from tests.helpers.trainers import QUIET, quiet_trainer

__all__ = [
    "QUIET",
    "DigitsClassifier",
    "DigitsDataModule",
    "RankReport",
    "RegressionDataModule",
    "RegressionModule",
    "TensorBoardRun",
    "fit_ddp",
    "quiet_trainer",
    "read_plugin_summaries",
    "read_tensorboard",
]
