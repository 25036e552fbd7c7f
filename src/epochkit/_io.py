"""Every file epochkit writes goes through :func:`atomic_path`: a reader (or a rerun after a crash) sees the old file
or the new one, never half of one; the file gets the mode the user's umask gives (like any file Lightning writes);
and a failed write (read-only directory, full disk) raises an error that names the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class WriteError(OSError):
    """A file epochkit had to write could not be written; ``errno`` is the operating system's."""


def _error(path: Path, err: OSError) -> WriteError:
    reason = err.strerror or str(err)
    return WriteError(err.errno, f"epochkit could not write {path}: {reason}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, move it onto ``path`` in one step.

    The temporary file is created with mode ``0o666`` minus the umask (``mkstemp`` would make it ``0o600``), so the
    result is readable by whoever may read the directory, as Lightning's own files are. It is flushed to disk before
    the move. If the block raises, the temporary file is removed and ``path`` is untouched. An ``OSError`` from
    creating the directory or file, from the block or from the move is raised as a :class:`WriteError` naming
    ``path`` (``errno`` kept).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "sub" / "notes.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['notes.txt'])
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise _error(target, err) from err
    try:
        yield tmp
        _commit(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise _error(target, err) from err
        raise


def _commit(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk and move it onto ``target`` (one ``rename``: atomic on a POSIX file system)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def check_writable(directory: str | os.PathLike, what: str) -> None:
    """Create ``directory`` if needed and write and remove a small file in it, so that a read-only or full file
    system fails before training, with a :class:`WriteError` naming the directory and ``what`` it is for."""
    directory = Path(directory)
    probe = directory / f".epochkit-write-check.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        write_bytes_atomic(probe, b"ok")
        probe.unlink()
    except OSError as err:
        cause = err.__cause__ if isinstance(err, WriteError) and isinstance(err.__cause__, OSError) else err
        reason = cause.strerror or str(cause)
        raise WriteError(cause.errno, f"{what} {directory} is not writable: {reason}") from err


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (``NaN`` allowed) through :func:`atomic_path`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "report.json"
        >>> write_json_atomic(target, {"coverage": 1.0})
        >>> target.read_text()
        '{\\n  "coverage": 1.0\\n}'
    """
    write_bytes_atomic(path, json.dumps(obj, indent=2, allow_nan=True).encode())


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as CSV (header: every key, in first-seen order) through :func:`atomic_path`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "folds.csv"
        >>> write_csv_atomic(target, [{"fold": 0, "acc": 0.9}, {"fold": 1, "loss": 0.3}])
        >>> target.read_text().splitlines()
        ['fold,acc,loss', '0,0.9,', '1,,0.3']
    """
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_path`; keep ``obj`` to tensors and plain types, so that it
    loads with :func:`load_torch` (``weights_only=True``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CorruptFileError(ValueError):
    """A file epochkit reads back is unreadable, truncated or not what it should hold; the message names the file,
    what is wrong with it and what to do."""


def _corrupt(path: str | os.PathLike, what: str, problem: str, remedy: str) -> CorruptFileError:
    return CorruptFileError(f"the {what} {path} {problem}; {remedy}")


def read_json(
    path: str | os.PathLike,
    what: str,
    remedy: str = "delete it (or fix it) and run again",
    expect: type = dict,
) -> Any:
    """The one reader of the JSON files epochkit writes: the parsed value, which must be an ``expect`` (an object by
    default), else a :class:`CorruptFileError` naming the file, what is wrong and ``remedy`` (what to do).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "kept.json"
        >>> _ = target.write_text("[1, 2]")
        >>> read_json(target, "kept-epoch file", "delete it")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        epochkit._io.CorruptFileError: the kept-epoch file .../kept.json holds a JSON list, not an object; delete it
    """
    try:
        text = Path(path).read_bytes().decode()
        value = json.loads(text)
    except FileNotFoundError:
        raise
    except IsADirectoryError as err:
        raise _corrupt(path, what, "is a directory, not a file", remedy) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = "is empty" if not Path(path).stat().st_size else f"is not valid JSON (truncated or garbled: {err})"
        raise _corrupt(path, what, problem, remedy) from err
    except RecursionError as err:
        raise _corrupt(path, what, "is nested too deeply to be read", remedy) from err
    if not isinstance(value, expect):
        kinds: dict[type, str] = {dict: "an object", list: "a list"}
        found: dict[type, str] = {dict: "object", list: "list", str: "string", int: "number", float: "number"}
        name = found.get(type(value), type(value).__name__) if value is not None else "null"
        raise _corrupt(path, what, f"holds a JSON {name}, not {kinds.get(expect, expect.__name__)}", remedy)
    return value


def load_torch(path: str | os.PathLike, what: str = "file", mmap: bool = False, remedy: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain types only, so that a file planted in a
    shared ``root_dir`` cannot run code when epochkit reads it. Anything else is refused with an error naming the
    file (``what`` says what it is); ``mmap=True`` only checks a big file without reading it all. An empty,
    truncated or garbled file is a :class:`CorruptFileError` naming it, with ``remedy`` (what to do).
    """
    remedy = remedy or "delete it and run again"
    try:
        if not Path(path).stat().st_size:
            raise _corrupt(path, what, "is empty (0 bytes): a write was cut short or the file was emptied", remedy)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (EOFError, OSError, RuntimeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise _corrupt(
            path, what, f"cannot be read as a torch file (truncated or garbled: {type(err).__name__}: {err})", remedy
        ) from err
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; its "WeightsUnpickler error: ..." line says what was refused.
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(err))
        first = found.group(1).strip() if found else type(err).__name__
        raise UnsafeFileError(
            f"refusing to load the {what} {path}: it holds Python objects other than tensors and plain types, and "
            f"unpickling them could run code (torch.load(weights_only=True): {first}). epochkit itself writes only "
            "tensors and plain types. If this is a Lightning checkpoint of yours whose hyper-parameters or callback "
            "states hold other objects, and you trust the file, load it yourself with "
            "torch.load(path, weights_only=False); otherwise delete it."
        ) from err


class UnsafeFileError(RuntimeError):
    """A file epochkit reads back holds objects that only a full (code-running) unpickling could restore."""
