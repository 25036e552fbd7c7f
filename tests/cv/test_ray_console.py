"""What ``RayExecutor`` prints on the user's console: the bar over the folds and nothing of Ray's own unless asked
(``verbose=True``), on a local Ray the executor starts itself (``ray.init`` is where Ray's output is configured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epochkit import CrossValidator
from epochkit.cv import RayExecutor
from tests.helpers import QUIET, RegressionDataModule, RegressionModule
from tests.helpers.ray import _ray_environment

pytestmark = pytest.mark.processes  # Ray starts worker processes


def _console_of_a_cv_on_ray(root: Path, verbose: bool, capfd: pytest.CaptureFixture[str]) -> tuple[str, str]:
    capfd.readouterr()
    with _ray_environment() as temp, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(temp))  # Ray's session files in the helper's short directory, removed after
        executor = RayExecutor(address="local", verbose=verbose)  # started here, sized to the machine (2 CPUs)
        CrossValidator(2, root_dir=root, verbose=False, executor=executor).fit(
            RegressionModule(),
            RegressionDataModule(num_samples=24, batch_size=6),
            # A model summary per fold unless the console is kept quiet.
            trainer_kwargs={**QUIET, "max_epochs": 1, "enable_model_summary": True},
        )
    out, err = capfd.readouterr()
    return out, err


def test_ray_stays_off_the_console_unless_asked_and_the_bar_shows_the_folds_running(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out, err = _console_of_a_cv_on_ray(tmp_path / "quiet", False, capfd)
    console = out + err
    assert "\x1b[" not in console  # no ANSI colour codes
    assert "pid=" not in console and "Trainable params" not in console  # no fold output, no model summary
    assert "Token authentication" not in console and "Started a local Ray instance" not in console
    assert "repeated" not in console  # no log deduplication lines
    # Both folds were placed on the 2 CPUs at once, and the bar said so (its worker processes start slowly).
    assert "running 2, queued 0" in err and "2/2" in err

    out, err = _console_of_a_cv_on_ray(tmp_path / "verbose", True, capfd)
    assert "(epochkit-fold pid=" in out + err and "Trainable params" in out + err  # asked: the folds' output
