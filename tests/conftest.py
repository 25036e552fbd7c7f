"""Process-wide test fixtures: every test runs in its own empty working directory with one torch thread, and fails
if it leaves a file in the repository; a test that starts DDP processes must be marked ``ddp``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import ddp

REPO = Path(__file__).resolve().parents[1]
# Tool caches and environments that running the suite legitimately fills; everything else must stay as it was.
_NOT_WATCHED = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}


def _repository_files() -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in _NOT_WATCHED and not d.endswith(".egg-info")]
        rel = Path(dirpath).relative_to(REPO)
        found.update(str(rel / name) for name in filenames)
        found.update(f"{rel / name}/" for name in dirnames)
    return found


@pytest.fixture(autouse=True)
def _no_files_left_in_the_repository() -> Iterator[None]:
    """Lightning writes ``lightning_logs/`` and checkpoints to the working directory by default: a test that lets it
    do so in the repository fails here (CI also fails on a dirty ``git status``)."""
    before = _repository_files()
    yield
    left = sorted(_repository_files() - before)
    assert not left, f"the test left files in the repository (write under tmp_path instead): {left[:10]}"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test writes relative to the working directory lands in its own ``tmp_path``."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tests train many tiny models; one intra-op thread each avoids oversubscribing a shared 2-core machine
    (with two threads a 16-sample step ran about 10x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_runtest_setup(item: pytest.Item) -> None:
    ddp.current_test = item  # fit_ddp checks that a test starting DDP processes is marked `ddp` (make stress runs them)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    ddp.current_test = None
