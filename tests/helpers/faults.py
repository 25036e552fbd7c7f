"""Faults injected into real runs: a disk that fills up in the middle of a write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from epochkit import _io


def fail_writes_with_enospc(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Path]:
    """Make every write of a file called ``name`` through epochkit's one atomic-write path fail as a full disk does:
    half the bytes reach the temporary file, then ``OSError(ENOSPC)``. Returns the list of targets that failed."""
    failed: list[Path] = []
    commit = _io._commit

    def full_disk(tmp: Path, target: Path) -> None:
        if target.name != name:
            commit(tmp, target)
            return
        with open(tmp, "r+b") as handle:
            handle.truncate(os.path.getsize(tmp) // 2)
        failed.append(target)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_io, "_commit", full_disk)
    return failed


def read_only_command(directory: Path, argv: list[str]) -> list[str]:
    """``argv`` to run with ``directory`` read-only: as root (whom permissions do not stop) in a private mount
    namespace where ``directory`` is bind-mounted read-only; otherwise with the directory's write bits removed."""
    if os.geteuid() == 0:
        script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(directory), *argv]
    directory.chmod(0o555)
    return argv
