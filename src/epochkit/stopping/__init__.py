"""Early stopping: :class:`EarlyStopping`, a drop-in subclass of Lightning's, and its criteria as pure functions."""

from epochkit.stopping import criteria
from epochkit.stopping.best_weights import HostWeights
from epochkit.stopping.early_stopping import EarlyStopping, StoppingReason

__all__ = ["EarlyStopping", "HostWeights", "StoppingReason", "criteria"]
