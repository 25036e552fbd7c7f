"""Run every test marked ``ddp`` or ``processes`` N times in a row (``make stress N=20``) and print, per test,
"N passed, M failed".

A flaky test is a failing test: a DDP test must pass every run. Exits non-zero if any run of any test failed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import Any

import pytest

_REPEAT = re.compile(r"-?\d+-\d+\]$")  # pytest-repeat appends "[run-count]" (or "-run-count]" to a parametrization)


class _Tally:
    def __init__(self) -> None:
        self.passed: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: Any) -> None:
        test = _REPEAT.sub("]", report.nodeid).replace("[]", "")
        if report.failed:  # in setup, call or teardown: the run failed
            self.failed[test] += 1
        elif report.when == "call" and report.passed:
            self.passed[test] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20, help="runs per test (default 20)")
    args, rest = parser.parse_known_args()
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    tally = _Tally()
    code = pytest.main(
        ["-m", "ddp or processes", f"--count={args.count}", "-q", "-p", "no:randomly", *rest], plugins=[tally]
    )
    tests = sorted(set(tally.passed) | set(tally.failed))
    print(f"\nstress: {args.count} runs of each of {len(tests)} tests that start processes")
    for test in tests:
        print(f"{tally.passed[test]} passed, {tally.failed[test]} failed  {test}")
    if not tests:
        print("no test is marked ddp or processes")
        return 1
    return 0 if code == 0 and not any(tally.failed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
