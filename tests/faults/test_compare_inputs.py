"""``python -m epochkit.audit compare`` fed bad reports: exit status 2 with the file named and what is wrong; 1 only
for runs that differ (rank digests compared with or without ``merged``); 0 for identical runs. Each case a row."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from epochkit.audit.__main__ import main


def _report(*epochs: Any) -> str:
    return json.dumps({"epochs": list(epochs)})


def _epoch(epoch: Any, ranks: list[str], merged: str | None = "m") -> dict[str, Any]:
    loader: dict[str, Any] = {"ranks": ranks} if merged is None else {"merged": merged + "".join(ranks), "ranks": ranks}
    return {"epoch": epoch, "digests": {"train_dataloader": loader}}


GOOD = _report(_epoch(0, ["a", "b"]), _epoch(1, ["c", "d"]))

NO_MERGED = _report(_epoch(0, ["a", "b"], merged=None), _epoch(1, ["c", "d"], merged=None))

# (name, text of report B, exit status, what stdout or stderr must say); report A is GOOD, or NO_MERGED for the rows
# named in A_WITHOUT_MERGED (both runs' reports then hold rank digests only)
ROWS: list[tuple[str, str | None, int, str]] = [
    ("garbage JSON", "not json at all", 2, r"shuffle audit report .*b\.json is not valid JSON \(truncated or garbled"),
    ("truncated JSON", GOOD[: len(GOOD) // 2], 2, r"b\.json is not valid JSON"),
    ("empty file", "", 2, r"b\.json is empty"),
    ("a JSON list", "[1, 2]", 2, r"b\.json holds a JSON list, not an object"),
    ("no epochs list", json.dumps({"epochs": {"0": {}}}), 2, r"b\.json is not a shuffle audit report"),
    ("epochs as numbers", json.dumps({"epochs": [1, 2]}), 2, r"b\.json: epochs\[0\] is a int, not an object"),
    (
        "an entry without an epoch",
        _report({"digests": {"train_dataloader": {"merged": "m", "ranks": ["a"]}}}),
        2,
        r"b\.json: epochs\[0\] has no epoch number \('epoch': None",
    ),
    ("epoch a string", _report(_epoch("0", ["a", "b"])), 2, r"epochs\[0\] has no epoch number \('epoch': '0'"),
    (
        "digests as a list",
        _report({"epoch": 0, "digests": [["a", "b"]]}),
        2,
        r"b\.json: epochs\[0\]\.digests is a list, not an object of loaders",
    ),
    (
        "a loader's digests malformed",
        _report({"epoch": 0, "digests": {"train_dataloader": {"ranks": "ab"}}}),
        2,
        r"epochs\[0\]\.digests\['train_dataloader'\] is not a loader's digests",
    ),
    ("deeply nested", "[" * 100_000 + "]" * 100_000, 2, r"b\.json is nested too deeply to be read"),
    (
        "an epoch listed twice",
        _report(_epoch(0, ["a", "b"]), _epoch(1, ["c", "d"]), _epoch(1, ["c", "x"])),
        2,
        r"b\.json: epochs\[2\] lists epoch 1 a second time",
    ),
    ("a missing file", None, 2, r"cannot read a shuffle audit report from .*b\.json"),
    ("identical", GOOD, 0, r"identical orders in epochs 0-1 \(1 loader, 2 ranks\)"),
    (
        "rank digests differ, no merged digest",
        _report(_epoch(0, ["a", "b"], merged=None), _epoch(1, ["c", "x"], merged=None)),
        1,
        r"first difference in epoch 1, loader 'train_dataloader', rank 1: d != x",
    ),
    (
        "rank digests differ, merged digests equal",
        _report(
            _epoch(0, ["a", "b"]), {"epoch": 1, "digests": {"train_dataloader": {"merged": "mcd", "ranks": ["c", "x"]}}}
        ),
        1,
        r"first difference in epoch 1, loader 'train_dataloader', rank 1: d != x",
    ),
]


A_WITHOUT_MERGED = {"rank digests differ, no merged digest"}


@pytest.mark.parametrize(("name", "text", "status", "says"), ROWS, ids=[r[0] for r in ROWS])
def test_compare_validates_its_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None, status: int, says: str
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(NO_MERGED if name in A_WITHOUT_MERGED else GOOD)
    if text is not None:
        b.write_text(text)
    assert main(["compare", str(a), str(b)]) == status
    out = capsys.readouterr()
    assert out.out.strip() if status != 2 else out.err.startswith("error: "), out
    assert re.search(says, out.out + out.err), out


def test_the_command_exits_2_naming_the_file_in_a_real_process(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(GOOD)
    b.write_text(_report({"digests": {}}))
    proc = subprocess.run(
        [sys.executable, "-m", "epochkit.audit", "compare", str(a), str(b)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc
    assert f"{b}: epochs[0] has no epoch number" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
