"""Capture and restore the global random number generators, so a resumed fold continues their streams."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _numpy_state() -> tuple[str, list[int], int, int, float]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)


def collect_rng_states() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), NumPy's and Python's global random number generators.

    Example:
        >>> states = collect_rng_states()
        >>> first = torch.rand(1)
        >>> set_rng_states(states)
        >>> torch.equal(torch.rand(1), first)
        True
    """
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # Plain types only, so that the checkpoint loads with `torch.load(weights_only=True)`.
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (keys it lacks are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
