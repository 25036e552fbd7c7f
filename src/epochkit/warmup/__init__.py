"""Learning-rate warmup: the :class:`LRWarmup` callback (its schedules live in :mod:`epochkit.schedules`, also
reachable here as ``epochkit.warmup.schedules``)."""

from epochkit import schedules
from epochkit.warmup.callback import LRWarmup

__all__ = ["LRWarmup", "schedules"]
