"""What makes a ``root_dir`` trustworthy across runs: a finished fold is reused only when its record names its fold,
the manifest it was made under and the checksums of the files it points to (paths relative to ``root_dir``), and
nothing is written or deleted while a symbolic link inside ``root_dir`` could lead outside it.

Plain functions, no Trainer: :class:`~epochkit.cv.CrossValidator` calls them before it trains, writes or deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from epochkit._io import CorruptFileError, read_json
from epochkit.cv.results import FoldResult

log = logging.getLogger("epochkit.cv")

__all__ = [
    "FoldPreempted",
    "RootDirError",
    "check_tree",
    "file_checksum",
    "finished_records",
    "manifest_identity",
    "preempted_fold",
    "read_fold_record",
    "relative_to",
]

FOLD_DIR = re.compile(r"fold_(\d+)")
# What CrossValidator (and its refit) write and delete in root_dir besides the fold_k directories.
OWNED_NAMES = frozenset(
    {
        "summary",
        "final",
        "cv_manifest.json",
        "oof_predictions.pt",
        "cv_results.json",
        "cv_results.csv",
        "refit_settings.json",
    }
)
WAY_OUT = "use another `root_dir`, or `overwrite=True` to delete that cross-validation and start over"


class RootDirError(ValueError):
    """What ``root_dir`` holds cannot be reused (or written to) safely; the message names the file and the way out."""


PREEMPTED_EXIT = 128 + int(signal.SIGTERM)  # 143: what a shell, Slurm and Kubernetes report for a SIGTERM-ed job


class FoldPreempted(SIGTERMException):
    """A fold stopped by SIGTERM (a preemption): a ``SystemExit`` with status 143, so a job scheduler sees the job
    fail, not finish. The fold resumes from its last epoch checkpoint when the same call runs again."""

    def __init__(self, fold: int, message: str) -> None:
        super().__init__(PREEMPTED_EXIT)
        self.fold = fold
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def preempted_fold(fold: int, root: Path, refit_dir: str | None = None) -> Iterator[None]:
    """Turn Lightning's ``SIGTERMException`` (a ``SystemExit(None)``: exit status 0) raised while fold ``fold``
    trains (or the refit, in ``root/refit_dir``) into :class:`FoldPreempted` (exit status 143), with one line on
    stderr (rank 0) saying which run was interrupted and how to resume. The files are whole: every one is written
    atomically."""
    try:
        yield
    except FoldPreempted:
        raise
    except SIGTERMException as err:
        if refit_dir is None:
            what, saved = f"fold {fold}", root / f"fold_{fold}" / "resume"
            again = "the same cross-validation again"
            reused = "finished folds are reused"
        else:
            what, saved = "the refit", root / refit_dir / "resume"
            again, reused = "the same refit again", "the folds are not retrained"
        message = (
            f"CrossValidator: {what} was interrupted by SIGTERM; its last finished epoch is saved in {saved}. Run "
            f"{again} with root_dir={str(root)!r} to resume it ({reused}); exiting with status {PREEMPTED_EXIT}."
        )
        log.info(message)  # printed below as well: INFO, so Python's last-resort handler does not print it twice
        if int(getattr(rank_zero_only, "rank", 0) or 0) == 0:
            print(message, file=sys.stderr, flush=True)
        raise FoldPreempted(fold, message) from err


def manifest_identity(plan_hash: str, config: Mapping[str, Any]) -> str:
    """The identity of a cross-validation: a hash of its fold plan and its settings, as the manifest pins them.

    Example:
        >>> a = manifest_identity("abc", {"seed": 0})
        >>> a == manifest_identity("abc", {"seed": 0}), a == manifest_identity("abc", {"seed": 1}), len(a)
        (True, False, 64)
    """
    canonical = json.dumps({"plan": plan_hash, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relative_to(path: str | os.PathLike | None, root: str | os.PathLike) -> str | None:
    """``path`` relative to ``root`` (POSIX form) when it lies inside it, else unchanged: what a fold record stores,
    so a ``root_dir`` moved elsewhere still points at its own files.

    Example:
        >>> relative_to("/data/cv/fold_1/model.pt", "/data/cv"), relative_to("/elsewhere/best.ckpt", "/data/cv")
        ('fold_1/model.pt', '/elsewhere/best.ckpt')
    """
    if path is None:
        return None
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return str(path)


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if ``relative`` is a relative path that stays inside ``root`` (no ``..``), else None."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        return None
    return root / candidate


def check_tree(root: Path) -> None:
    """Refuse a ``root_dir`` in which a write or a delete could reach outside it, or where a fold's directory is a
    file: every symbolic link among what CrossValidator writes and deletes in ``root`` (``fold_k/``, ``summary/``,
    ``final/`` and the files beside them; ``root`` itself may be a link) is an error naming it, found before anything
    is written or deleted, except a link to a file inside ``root``. Other entries of ``root`` (a user's own files,
    another tool's directory) are never written or deleted, so links there are left alone.

    Raises:
        RootDirError: Naming the first links (or the file in a fold directory's place) and what to do.
    """
    if not root.exists():
        return
    links: list[str] = []
    inside = os.path.realpath(root)
    owned = [child for child in root.iterdir() if FOLD_DIR.fullmatch(child.name) or child.name in OWNED_NAMES]
    candidates: list[Path] = []
    for child in owned:
        candidates.append(child)
        if child.is_dir() and not child.is_symlink():
            for directory, dirnames, filenames in os.walk(child, followlinks=False):
                candidates += [Path(directory) / name for name in (*dirnames, *filenames)]
    for path in candidates:
        if not path.is_symlink():
            continue
        target = os.path.realpath(path)
        # A link to a file inside root_dir (Lightning's `ModelCheckpoint(save_last="link")`) is safe: a write
        # replaces the link, a delete removes it. A link to a directory, or to anything outside, is not.
        if not (os.path.isfile(target) and os.path.commonpath([inside, target]) == inside):
            links.append(f"{path} -> {os.readlink(path)}")
    if links:
        raise RootDirError(
            f"root_dir {root} holds symbolic links ({', '.join(links[:5])}{', ...' if len(links) > 5 else ''}): "
            "CrossValidator writes and deletes only inside root_dir and will not follow them. Replace each link by "
            "a real directory or file, or use another `root_dir`."
        )
    for child in root.iterdir():
        if FOLD_DIR.fullmatch(child.name) and not child.is_dir():
            raise RootDirError(
                f"{child} is a file where CrossValidator keeps the directory of fold {child.name[5:]}: move or "
                f"delete it, or {WAY_OUT}."
            )


def finished_records(root: Path) -> dict[int, Path]:
    """``{k: root/fold_k/fold_result.json}`` for every fold directory holding a record, whatever ``k``."""
    found: dict[int, Path] = {}
    if root.is_dir():
        for child in root.iterdir():
            match = FOLD_DIR.fullmatch(child.name)
            if match and (child / "fold_result.json").is_file():
                found[int(match.group(1))] = child / "fold_result.json"
    return found


def read_fold_record(path: Path, fold: int, identity: str, root: Path) -> FoldResult:
    """Read ``root/fold_k/fold_result.json`` for reuse, checked: it must be a fold record of fold ``fold``, made
    under the manifest whose identity is ``identity``, and every file it lists must exist inside ``root`` with its
    recorded checksum. Its relative paths come back resolved against ``root`` (where the files are now).

    Raises:
        RootDirError: Naming the record, what does not match and the way out.
    """
    remedy = f"delete {path.parent} to redo fold {fold}, or {WAY_OUT}"
    try:
        data = read_json(path, "fold record", remedy)
    except CorruptFileError as err:
        raise RootDirError(str(err)) from err
    if data.get("fold") != fold:
        raise RootDirError(f"{path} is the record of fold {data.get('fold')!r}, not of fold {fold}; {remedy}.")
    if data.get("manifest_identity") != identity:
        raise RootDirError(
            f"{path} was made for another cross-validation than the one pinned in this root_dir's manifest "
            f"(identity {str(data.get('manifest_identity'))[:12]}, manifest {identity[:12]}): an edited or copied "
            f"record, or one written by an older epochkit; {remedy}."
        )
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise RootDirError(f"{path} lists no files with their checksums; {remedy}.")
    for relative, checksum in files.items():
        target = _inside(root, str(relative))
        if target is None:
            raise RootDirError(f"{path} points outside root_dir ({relative!r}); {remedy}.")
        if not target.is_file():
            raise RootDirError(f"{path} points to {target}, which is missing; {remedy}.")
        if file_checksum(target) != checksum:
            raise RootDirError(
                f"{target} is not the file {path} recorded (checksum {str(checksum)[:12]}, now "
                f"{file_checksum(target)[:12]}): it was changed or replaced; {remedy}."
            )
    try:
        result = FoldResult.from_dict(data)
    except TypeError as err:
        raise RootDirError(f"{path} is not a fold record ({err}); {remedy}.") from err
    for name in ("model_path", "best_model_path", "resumed_from"):
        value = getattr(result, name)
        if value is not None and not Path(value).is_absolute():
            setattr(result, name, str(root.absolute() / value))
    return result
