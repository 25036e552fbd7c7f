"""``epochkit.schedules``: learning-rate schedules with warmup (see :mod:`epochkit.warmup.schedules`)."""

from epochkit.warmup.schedules import *  # noqa: F403
from epochkit.warmup.schedules import __all__ as __all__
