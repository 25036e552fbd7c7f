"""Audit tests train many tiny models; one intra-op thread each avoids oversubscribing a shared 2-core machine
(with two threads a 16-sample step here ran about 10x slower under load)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fits without a logger write their report to the working directory, as Lightning writes checkpoints."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
