"""Run a script in a fresh process the way a user would, and leave nothing running if it hangs."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any


def run_script(argv: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)`` in a session of its own.

    On a timeout the whole process group is killed, not the first process only: a script Lightning re-launches for
    rank 1, or one that starts a local Ray, has children that ``subprocess.run`` would leave running (a rank 1 of a
    timed-out DDP script ran on for 47 minutes). Then ``subprocess.TimeoutExpired`` is raised as usual.
    """
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
