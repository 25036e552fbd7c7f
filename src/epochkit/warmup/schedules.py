"""``epochkit.warmup.schedules`` is kept importable (``epochkit.warmup`` exported it before the schedules that are not
warmup got a room of their own): it re-exports the public names of :mod:`epochkit.schedules`, the real module."""

from epochkit.schedules import *  # noqa: F403
from epochkit.schedules import __all__ as __all__
