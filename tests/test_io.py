"""The one way epochkit writes and reads back its files: atomic, with the umask's mode, clear errors, safe loads."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import stat
import threading
from pathlib import Path

import pytest
import torch

from epochkit import _io
from tests.helpers.faults import fail_writes_with_enospc


def test_json_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    _io.write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    with pytest.raises(TypeError):
        _io.write_json_atomic(target, {"bad": object()})
    # The failed write neither replaced the good file nor left its temp file behind.
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _io.write_json_atomic(tmp_path / "a.json", {})
        _io.write_csv_atomic(tmp_path / "a.csv", [{"x": 1}])
        _io.save_torch_atomic({"t": torch.zeros(1)}, tmp_path / "a.pt")
        os.umask(0o077)
        _io.write_json_atomic(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o644, "a.csv": 0o644, "a.pt": 0o644, "private.json": 0o600}


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cv_results.json"
    _io.write_json_atomic(target, {"folds": [0]})
    fail_writes_with_enospc(monkeypatch, "cv_results.json")
    with pytest.raises(_io.WriteError) as caught:
        _io.write_json_atomic(target, {"folds": [0, 1]})
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value) and "No space left on device" in str(caught.value)
    assert json.loads(target.read_text()) == {"folds": [0]}
    assert [p.name for p in tmp_path.iterdir()] == ["cv_results.json"]


def test_an_unwritable_directory_is_named_before_anything_is_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    with pytest.raises(_io.WriteError, match=r"root_dir .*not_a_directory/cv is not writable: Not a directory"):
        _io.check_writable(blocker / "cv", "root_dir")
    _io.check_writable(tmp_path / "fine", "root_dir")
    assert list((tmp_path / "fine").iterdir()) == []


def test_a_torch_save_that_fails_mid_pickle_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    _io.save_torch_atomic({"weights": torch.arange(4.0)}, target)
    # The tensors pickle first, then the lock cannot be pickled: torch.save has already begun writing the file.
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object"):
        _io.save_torch_atomic({"weights": torch.ones(1000), "lock": threading.Lock()}, target)
    assert torch.equal(_io.load_torch(target, "weights file")["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


class _Planted:
    """Unpickling this creates a marker file: what a file planted in a shared directory could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    """Write a file that runs code (creates ``marker``) when fully unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "payload": _Planted(marker)}, path)


def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    plant(tmp_path / "oof.pt", marker)
    with pytest.raises(_io.UnsafeFileError, match=r"refusing to load the prediction file .*oof\.pt"):
        _io.load_torch(tmp_path / "oof.pt", "prediction file")
    assert not marker.exists()
    _io.save_torch_atomic({"index": torch.arange(3), "n": 3, "name": "x"}, tmp_path / "ours.pt")
    assert _io.load_torch(tmp_path / "ours.pt")["n"] == 3
