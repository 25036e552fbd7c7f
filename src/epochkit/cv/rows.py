"""Out-of-fold prediction rows: check a ``predict_step`` output has one row per sample, join batches, pick rows.

A prediction is a tensor or a (nested) tuple, list or dict of tensors whose first dimension is the sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning_utilities import apply_to_collection


def _checked_leaf(value: Any, n: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"predict_step returned a {type(value).__name__}; out-of-fold predictions need tensors.")
    if value.ndim == 0 or value.shape[0] != n:
        raise ValueError(
            f"predict_step returned a tensor of shape {tuple(value.shape)} for a batch of {n} samples; "
            "out-of-fold predictions need one row per sample."
        )
    return value.detach().cpu()


def checked_rows(prediction: Any, n: int) -> Any:
    """Check ``prediction`` has ``n`` rows (tensors, or tuples/lists/dicts of them) and move it to the CPU.

    Example:
        >>> checked_rows({"p": torch.zeros(3, 2)}, 3)["p"].shape
        torch.Size([3, 2])
        >>> checked_rows(torch.zeros(2), 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: predict_step returned a tensor of shape (2,) for a batch of 3 samples; ...
        >>> checked_rows((torch.zeros(3), "3 labels"), 3)
        Traceback (most recent call last):
        ...
        TypeError: predict_step returned a str; out-of-fold predictions need tensors.
    """
    # Every leaf that is not a tuple, list or mapping reaches `_checked_leaf`, which rejects what is not a tensor.
    return apply_to_collection(prediction, object, _checked_leaf, n, wrong_dtype=(Mapping, list, tuple))


def concat_rows(parts: list[Any]) -> Any:
    """Join per-batch predictions of the same structure along their rows.

    Example:
        >>> concat_rows([(torch.zeros(2),), (torch.ones(1),)])
        (tensor([0., 0., 1.]),)
    """
    # Not `apply_to_collection`: it walks one collection, and this zips several.
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, dict):
        return {k: concat_rows([p[k] for p in parts]) for k in first}
    return type(first)(concat_rows(list(items)) for items in zip(*parts, strict=True))


def take_rows(value: Any, rows: np.ndarray) -> Any:
    """The rows ``rows`` (in that order) of every tensor in ``value``.

    Example:
        >>> take_rows({"p": torch.arange(4)}, np.array([3, 0]))
        {'p': tensor([3, 0])}
    """
    index = torch.as_tensor(rows, dtype=torch.long)
    return apply_to_collection(value, torch.Tensor, lambda tensor: tensor[index])
