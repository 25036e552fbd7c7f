"""A ``root_dir`` tampered with between two runs: every case a row, each refused before anything is trained, written
or deleted, with an error naming the file and what to do; and a moved ``root_dir`` that uses only its own files."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from epochkit import CrossValidator
from tests.cv.test_validator import _factory
from tests.helpers import QUIET, RegressionDataModule, RegressionModule

WAY_OUT = r"another `root_dir`, or `overwrite=True`"


def _fit(root: Path, n_splits: int = 3, fail_in_fold: int | None = None, **kwargs: Any) -> Any:
    torch.manual_seed(0)  # the same starting weights in every run
    cv = CrossValidator(n_splits, root_dir=root, verbose=False, **kwargs)
    return cv.fit(
        RegressionModule(), RegressionDataModule(num_samples=24, batch_size=4), trainer_factory=_factory(fail_in_fold)
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-fold cross-validation run to the end."""
    root = tmp_path_factory.mktemp("finished") / "cv"
    _fit(root)
    return root


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-fold cross-validation that failed in fold 1 after an epoch: fold 0 finished, fold 1 can resume."""
    root = tmp_path_factory.mktemp("interrupted") / "cv"
    with pytest.raises(RuntimeError, match="boom in fold 1"):
        _fit(root, fail_in_fold=1)
    assert (root / "fold_1" / "resume" / "last.ckpt").exists() and (root / "fold_0" / "resume" / "last.ckpt").exists()
    return root


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda data: {**data, key: value}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _symlink_fold(root: Path) -> None:
    outside = root.parent / "outside"
    shutil.move(root / "fold_1", outside)
    (root / "fold_1").symlink_to(outside, target_is_directory=True)


def _symlink_file(root: Path) -> None:
    outside = root.parent / "outside.pt"
    shutil.move(root / "fold_0" / "oof.pt", outside)
    (root / "fold_0" / "oof.pt").symlink_to(outside)


def _another_models_checkpoint(root: Path) -> None:
    state = {"state_dict": {"w": torch.zeros(3)}, "epoch": 1, "global_step": 6, "callbacks": {}}
    torch.save(state, root / "fold_1" / "resume" / "last.ckpt")


def _copy_fold0_checkpoint(root: Path) -> None:
    for name in ("last.ckpt", "last.json"):
        shutil.copy(root / "fold_0" / "resume" / name, root / "fold_1" / "resume" / name)


def _file_for_fold_dir(root: Path) -> None:
    shutil.rmtree(root / "fold_2")
    (root / "fold_2").write_text("not a directory")


# (name, which root, tamper(root), rerun arguments, error type, message)
TAMPERED: list[tuple[str, str, Callable[[Path], None], dict[str, Any], type[Exception], str]] = [
    (
        "fold number edited in a record",
        "finished",
        lambda r: _edit_json(r / "fold_1" / "fold_result.json", _set("fold", 2)),
        {},
        ValueError,
        r"fold_1/fold_result\.json is the record of fold 2, not of fold 1; delete .*fold_1 to redo fold 1, or use "
        + WAY_OUT,
    ),
    (
        "manifest deleted, rerun with other n_splits",
        "finished",
        lambda r: (r / "cv_manifest.json").unlink(),
        {"n_splits": 4},
        ValueError,
        rf"holds finished folds .*fold_result\.json.* but no cv_manifest\.json.* use {WAY_OUT}",
    ),
    (
        "manifest deleted, rerun with the same settings",
        "finished",
        lambda r: (r / "cv_manifest.json").unlink(),
        {},
        ValueError,
        r"but no cv_manifest\.json",
    ),
    (
        "manifest garbled",
        "finished",
        lambda r: (r / "cv_manifest.json").write_text('{"hash": "ab'),
        {},
        ValueError,
        r"cross-validation manifest .*cv_manifest\.json is not valid JSON \(truncated or garbled",
    ),
    (
        "manifest a JSON list",
        "finished",
        lambda r: (r / "cv_manifest.json").write_text("[1, 2]"),
        {},
        ValueError,
        r"cv_manifest\.json holds a JSON list, not an object",
    ),
    (
        "record garbled",
        "finished",
        lambda r: (r / "fold_0" / "fold_result.json").write_text("}{"),
        {},
        ValueError,
        r"fold record .*fold_0/fold_result\.json is not valid JSON.*delete .*fold_0 to redo fold 0",
    ),
    (
        "record truncated",
        "finished",
        lambda r: _truncate(r / "fold_0" / "fold_result.json"),
        {},
        ValueError,
        r"fold_0/fold_result\.json is not valid JSON \(truncated or garbled",
    ),
    (
        "record empty",
        "finished",
        lambda r: (r / "fold_2" / "fold_result.json").write_text(""),
        {},
        ValueError,
        r"fold_2/fold_result\.json is empty",
    ),
    (
        "record a JSON list",
        "finished",
        lambda r: (r / "fold_1" / "fold_result.json").write_text("[]"),
        {},
        ValueError,
        r"fold_1/fold_result\.json holds a JSON list, not an object",
    ),
    (
        "record of another cross-validation",
        "finished",
        lambda r: _edit_json(r / "fold_1" / "fold_result.json", _set("manifest_identity", "0" * 64)),
        {},
        ValueError,
        r"fold_1/fold_result\.json was made for another cross-validation",
    ),
    (
        "record pointing outside root_dir",
        "finished",
        lambda r: _edit_json(r / "fold_1" / "fold_result.json", _set("files", {"../elsewhere/model.pt": "0"})),
        {},
        ValueError,
        r"fold_1/fold_result\.json points outside root_dir \('\.\./elsewhere/model\.pt'\)",
    ),
    (
        "zero-byte oof.pt",
        "finished",
        lambda r: (r / "fold_1" / "oof.pt").write_bytes(b""),
        {},
        ValueError,
        r"fold_1/oof\.pt is not the file .*fold_1/fold_result\.json recorded .*changed or replaced",
    ),
    (
        "model.pt deleted",
        "finished",
        lambda r: (r / "fold_2" / "model.pt").unlink(),
        {},
        ValueError,
        r"fold_2/fold_result\.json points to .*fold_2/model\.pt, which is missing",
    ),
    (
        "a stray record of a fold the plan lacks",
        "finished",
        lambda r: shutil.copytree(r / "fold_2", r / "fold_5"),
        {},
        ValueError,
        r"fold_5/fold_result\.json is the record of a fold this 3-fold cross-validation does not have",
    ),
    (
        "a file where a fold directory belongs",
        "finished",
        _file_for_fold_dir,
        {},
        ValueError,
        rf"fold_2 is a file where CrossValidator keeps the directory of fold 2: move or delete it, or use {WAY_OUT}",
    ),
    (
        "a fold directory symlinked outside root_dir",
        "finished",
        _symlink_fold,
        {},
        ValueError,
        r"holds symbolic links \(.*fold_1 -> .*outside\).* will not follow them",
    ),
    (
        "a file symlinked outside root_dir",
        "finished",
        _symlink_file,
        {},
        ValueError,
        r"holds symbolic links \(.*fold_0/oof\.pt -> .*outside\.pt\)",
    ),
    (
        "a symlink and overwrite=True",
        "finished",
        _symlink_fold,
        {"overwrite": True},
        ValueError,
        r"holds symbolic links \(.*fold_1 -> ",
    ),
    (
        "fold 0's resume checkpoint copied into fold 1",
        "interrupted",
        _copy_fold0_checkpoint,
        {},
        RuntimeError,
        r"resume checkpoint .*fold_1/resume/last\.ckpt belongs to another fold or run: fold 0 \(this fold: 1\).*"
        r"delete .*fold_1/resume to redo fold 1",
    ),
    (
        "half-written resume checkpoint",
        "interrupted",
        lambda r: _truncate(r / "fold_1" / "resume" / "last.ckpt"),
        {},
        ValueError,
        r"resume checkpoint .*fold_1/resume/last\.ckpt cannot be read as a torch file \(truncated or garbled",
    ),
    (
        "zero-byte resume checkpoint",
        "interrupted",
        lambda r: (r / "fold_1" / "resume" / "last.ckpt").write_bytes(b""),
        {},
        ValueError,
        r"resume checkpoint .*fold_1/resume/last\.ckpt is empty \(0 bytes\).*delete .*fold_1/resume",
    ),
    (
        "another model's checkpoint in resume/",
        "interrupted",
        _another_models_checkpoint,
        {},
        RuntimeError,
        r"resume checkpoint .*fold_1/resume/last\.ckpt was not written by a CrossValidator fold",
    ),
    (
        "resume step file garbled",
        "interrupted",
        lambda r: (r / "fold_1" / "resume" / "last.json").write_text("{"),
        {},
        ValueError,
        r"resume step file .*fold_1/resume/last\.json is not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("source", "tamper", "rerun", "error", "message"),
    [row[1:] for row in TAMPERED],
    ids=[row[0] for row in TAMPERED],
)
def test_a_tampered_root_dir_is_refused_naming_the_file(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    source: str,
    tamper: Callable[[Path], None],
    rerun: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    root = tmp_path / "cv"
    shutil.copytree(request.getfixturevalue(source), root, symlinks=True)
    tamper(root)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    with pytest.raises(error, match=message):
        _fit(root, **rerun)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    if source == "finished":  # refused before anything was written, deleted or trained
        assert after == before
    else:  # the fold resumes: only its own directory was touched, and nothing was trained
        assert not (root / "fold_1" / "fold_result.json").exists()


def test_a_moved_root_dir_uses_its_own_files(tmp_path: Path) -> None:
    first = tmp_path / "a"
    _fit(first)
    moved = tmp_path / "b"
    os.rename(first, moved)
    _fit(first, seed=1, overwrite=True)  # a new cross-validation where the old one was
    record = json.loads((moved / "fold_1" / "fold_result.json").read_text())
    assert record["model_path"] == "fold_1/model.pt" and "fold_1/model.pt" in record["files"]
    result = _fit(moved)  # every fold reused, from the moved root's own files
    assert [f.model_path for f in result.folds] == [str(moved / f"fold_{k}" / "model.pt") for k in range(3)]
    ensemble = result.ensemble()
    for k, member in enumerate(ensemble.models):
        expected = torch.load(moved / f"fold_{k}" / "model.pt", weights_only=True)
        torch.testing.assert_close(member.state_dict(), expected, rtol=0, atol=0)
    (moved / "fold_1" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"fold 1 has no saved weights at .*b/fold_1/model\.pt"):
        result.ensemble()
    with pytest.raises(ValueError, match=r"b/fold_1/model\.pt, which is missing"):
        _fit(moved)


def test_links_to_files_inside_root_dir_are_kept_and_reused(tmp_path: Path) -> None:
    # Lightning's ModelCheckpoint(save_last="link") makes last.ckpt a link to a checkpoint beside it.
    def run() -> Any:
        torch.manual_seed(0)
        kwargs = {
            **QUIET,
            "max_epochs": 2,
            "enable_checkpointing": True,
            "callbacks": [ModelCheckpoint(save_last="link")],
        }
        cv = CrossValidator(2, root_dir=tmp_path / "cv", verbose=False)
        return cv.fit(RegressionModule(), RegressionDataModule(num_samples=16, batch_size=4), trainer_kwargs=kwargs)

    first = run()
    links = [p for p in (tmp_path / "cv").rglob("*.ckpt") if p.is_symlink()]
    assert links, "ModelCheckpoint(save_last='link') made no link"
    again = run()  # every fold reused
    assert [f.kept for f in again.folds] == [f.kept for f in first.folds]
    assert all(p.is_symlink() for p in links)


def test_links_outside_what_the_cv_writes_are_left_alone(tmp_path: Path) -> None:
    # root_dir may hold other things (a Ray temp directory with its `session_latest` link, a user's data link):
    # CrossValidator never writes or deletes there, so they are neither refused nor touched, overwrite or not.
    root = tmp_path / "cv"
    (root / "ray").mkdir(parents=True)
    (root / "ray" / "session_1").mkdir()
    (root / "ray" / "session_latest").symlink_to(root / "ray" / "session_1", target_is_directory=True)
    outside = tmp_path / "data"
    outside.mkdir()
    (root / "data").symlink_to(outside, target_is_directory=True)
    _fit(root, n_splits=2)
    _fit(root, n_splits=3, overwrite=True)
    assert (root / "ray" / "session_latest").is_symlink() and (root / "data").is_symlink()
    assert sorted(p.name for p in root.glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]
