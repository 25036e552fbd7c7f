"""What ``RayExecutor`` prints on the user's console: the bar over the folds and nothing of Ray's own unless asked
(``verbose=True``), on a local Ray the executor starts itself (``ray.init`` is where Ray's output is configured)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from epochkit import CrossValidator
from epochkit.cv import RayExecutor
from epochkit.cv.ray_executor import _FoldBar
from tests.helpers import QUIET, RegressionDataModule, RegressionModule
from tests.helpers.ray import _ray_environment, local_ray

pytestmark = pytest.mark.processes  # Ray starts worker processes


def _console_of_a_cv_on_ray(root: Path, verbose: bool, capfd: pytest.CaptureFixture[str]) -> tuple[str, str]:
    capfd.readouterr()
    with _ray_environment():  # RAY_TMPDIR: Ray's session files in the helper's short directory, removed after
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
    assert "2/2" in err and "running " in err  # the bar over the folds, with its running count

    out, err = _console_of_a_cv_on_ray(tmp_path / "verbose", True, capfd)
    assert "(epochkit-fold pid=" in out + err and "Trainable params" in out + err  # asked: the folds' output


def test_the_bar_counts_as_running_the_folds_ray_placed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Two fold-sized tasks (one CPU each) that hold their CPU until told: once Ray has placed both, the executor
    counts 2 running, before either has started training (their worker processes start slowly). Waiting for Ray's
    resource view is bounded, not timed: the tasks hold until the count is seen."""
    import ray

    release = tmp_path / "release"

    @ray.remote(num_cpus=1)
    def hold(path: str) -> int:
        while not Path(path).exists():
            time.sleep(0.05)
        return 1

    with local_ray(num_cpus=2):
        executor = RayExecutor(cpus_per_fold=1)
        assert executor._placed_folds(ray) == 0
        refs = [hold.remote(str(release)) for _ in range(2)]
        deadline = time.monotonic() + 120
        while executor._placed_folds(ray) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        placed = executor._placed_folds(ray)
        release.touch()
        assert ray.get(refs) == [1, 1]
    assert placed == 2

    capfd.readouterr()
    bar = _FoldBar(2, enabled=True)
    bar.show(placed, 2, 0)
    bar.bar.close()
    assert "running 2, queued 0" in capfd.readouterr().err
