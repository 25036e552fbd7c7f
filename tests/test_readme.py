"""Every Python block of README.md and of the documentation pages (docs/**/*.md) runs as pasted, each in a fresh
process, and the cross-validation example reruns by skipping the folds it finished; the install line works from a
checkout. A block that appears word for word in several pages (the README's examples are the guides' first blocks)
runs once.

A block that is not meant to run says so in an HTML comment on the line before it: ``<!-- not run: why -->``.
Blocks run in an empty working directory with Lightning's own environment defaults for the Trainer,
``PL_TRAINER_LIMIT_TRAIN_BATCHES`` and ``PL_TRAINER_LIMIT_VAL_BATCHES`` (the README names them), so the examples'
full ``max_epochs`` run on two batches an epoch. Most of a block's time is Python importing torch and Lightning, so
the module starts every process at once, on as many workers as there are cores, and each test waits for its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The pages whose blocks run: the README and every page of the documentation site, found anew at each run.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SHORT_RUN = {"PL_TRAINER_LIMIT_TRAIN_BATCHES": "2", "PL_TRAINER_LIMIT_VAL_BATCHES": "2"}
_FENCE = re.compile(r"^```(?P<lang>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # the page's path relative to the repository, e.g. "docs/guides/warmup.md"
    line: int  # where the fence opens in it
    code: str
    not_run: str | None  # the reason given in the comment before it, if any

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group("lang").strip().lower() not in ("python", "py", "python3"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = _NOT_RUN.search(before)
        line = text.count("\n", 0, match.start()) + 1
        name = page.relative_to(ROOT).as_posix()
        blocks.append(Block(name, line, match.group("code"), reason.group("why") if reason else None))
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]
# One run per distinct code: the first place it appears (the README, then the pages) stands for every copy.
RUNNABLE = [b for i, b in enumerate(BLOCKS) if b.not_run is None and all(b.code != a.code for a in BLOCKS[:i])]
CV_BLOCK = next((b for b in RUNNABLE if "CrossValidator(" in b.code), None)

Run = subprocess.CompletedProcess  # of str


def run_block(block: Block, cwd: Path, name: str = "block") -> Run:
    script = cwd / f"{name}_{Path(block.page).stem}_{block.line}.py"
    script.write_text(block.code)
    # One intra-op thread per process, as the in-process tests have (tests/conftest.py): they run side by side.
    env = {**os.environ, **SHORT_RUN, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script.name], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def ok(block: Block, proc: Run) -> str:
    assert proc.returncode == 0, (
        f"{block} fails as pasted:\n{block.code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return str(proc.stdout)


def _run_twice(block: Block, cwd: Path) -> tuple[Path, Run, Run | None]:
    first = run_block(block, cwd, "first")
    return cwd, first, None if first.returncode else run_block(block, cwd, "second")


def _install(target: Path) -> tuple[Path, Run]:
    command = ["pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)]
    return target, subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Every process of this module, started at once: ``{str(block): run, "cv": (dir, first, second), "install":
    (dir, pip)}``, each in its own temporary directory."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        jobs: dict[str, Future] = {}
        if CV_BLOCK is not None:  # the longest first
            jobs["cv"] = pool.submit(_run_twice, CV_BLOCK, tmp_path_factory.mktemp("readme_cv"))
        for block in RUNNABLE:
            if block is not CV_BLOCK:
                jobs[str(block)] = pool.submit(run_block, block, tmp_path_factory.mktemp(f"block_{block.line}"))
        jobs["install"] = pool.submit(_install, tmp_path_factory.mktemp("install") / "site")
        yield jobs


def test_the_readme_has_runnable_python_blocks_and_says_why_of_the_others() -> None:
    assert len([b for b in BLOCKS if b.page == "README.md" and b.not_run is None]) >= 5, [str(b) for b in BLOCKS]
    assert len(RUNNABLE) >= 9, [str(b) for b in BLOCKS]
    assert {b.page for b in RUNNABLE} >= {"README.md", "docs/guides/warmup.md", "docs/your-own-project.md"}
    assert all(b.not_run.strip() for b in BLOCKS if b.not_run is not None)
    assert CV_BLOCK is not None, "the README's cross-validation example is no longer a runnable block"
    # The short-run switch the tests use is one the README tells its readers about.
    assert all(name in README.read_text() for name in SHORT_RUN)


def test_the_readme_is_what_a_first_visitor_needs_and_links_the_pages() -> None:
    """Under 200 lines; the rest is in the documentation pages, each of which it reaches by a link that exists."""
    text = README.read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert {"docs/getting-started.md", "docs/findings.md", "docs/your-own-project.md"} <= set(links), links
    guides = ("warmup", "early-stopping", "shuffle-audit", "cross-validation")
    assert {f"docs/guides/{g}.md" for g in guides} <= set(links), links
    assert all((ROOT / link).is_file() for link in links), links


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b is not CV_BLOCK], ids=str)
def test_every_python_block_runs_as_pasted(block: Block, started: dict[str, Future]) -> None:
    ok(block, started[str(block)].result())


def test_the_cv_example_runs_and_reruns_by_skipping_the_folds_it_finished(started: dict[str, Future]) -> None:
    """Run the README's cross-validation twice, unchanged, in two processes: the first trains every fold, the second
    trains nothing, says so for every fold, and reports exactly the first run's results."""
    assert CV_BLOCK is not None
    cwd, first_run, second_run = started["cv"].result()
    first = ok(CV_BLOCK, first_run)
    (results,) = cwd.rglob("cv_results.json")
    before = json.loads(results.read_text())
    n_folds = before["n_splits"]
    assert len(re.findall(r"^fold \d+ \(\d+/\d+\): \d+ epochs?, ", first, re.MULTILINE)) == n_folds, first

    second = ok(CV_BLOCK, second_run)
    skipped = re.findall(r"^fold (\d+) \(\d+/\d+\): finished in an earlier run, skipped", second, re.MULTILINE)
    assert skipped == [str(k) for k in range(n_folds)], second
    assert not re.search(r"^fold .*\d+ epochs?, ", second, re.MULTILINE), second  # nothing trained again
    assert json.loads(results.read_text())["folds"] == before["folds"]


def test_the_install_line_installs_from_a_checkout(started: dict[str, Future], tmp_path: Path) -> None:
    """`pip install <checkout>` as the README says (epochkit is not on PyPI yet); here into a target directory,
    without the dependencies, which this environment already has, and with the build backend it already has."""
    assert re.search(r"^pip install \./epochkit\b", README.read_text(), re.MULTILINE)
    target, proc = started["install"].result()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = "import epochkit, pathlib; print(pathlib.Path(epochkit.__file__).resolve())"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(target.resolve())
