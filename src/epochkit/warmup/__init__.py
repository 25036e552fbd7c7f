"""Learning-rate warmup: the :class:`LRWarmup` callback and the :mod:`~epochkit.warmup.schedules` factories."""

from epochkit.warmup import schedules
from epochkit.warmup.callback import LRWarmup

__all__ = ["LRWarmup", "schedules"]
