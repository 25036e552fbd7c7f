"""``python -m epochkit.cv --config config.yaml``: K-fold and the refit from a real LightningCLI YAML file with real
classes, flags over the file, ``--print_config``, a rerun that skips everything, and a user's own LightningCLI
subclass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from epochkit.cv.cli import CrossValidationCLI

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
seed_everything: 3
model:
  class_path: epochkit.demo.DigitsClassifier
  init_args:
    hidden: 16
data:
  class_path: epochkit.demo.DigitsDataModule
  init_args:
    batch_size: 128
trainer:
  max_epochs: 4
  limit_train_batches: 2
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: epochkit.EarlyStopping
      init_args:
        monitor: val_loss
        patience: 1
    - class_path: epochkit.LRWarmup
      init_args:
        fraction: 0.5
cv:
  n_splits: 3
  stratify: true
  root_dir: cv_runs
refit: true
"""


def _run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    argv = [sys.executable, "-m", "epochkit.cv", "--config", "config.yaml", *flags]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)


def test_k_fold_and_refit_from_a_lightning_cli_config_and_a_rerun_skips_both(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    printed = _run(tmp_path, "--cv.n_splits", "2", "--print_config")
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["cv"]["n_splits"] == 2 and config["cv"]["stratify"] is True and config["refit"] is True
    assert config["trainer"]["max_epochs"] == 4 and config["model"]["init_args"]["hidden"] == 16
    assert not (tmp_path / "cv_runs").exists()  # printing the config runs nothing

    first = _run(tmp_path, "--cv.n_splits", "2", "--trainer.max_epochs", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("fold ")] == ["fold 0 (1/2)", "fold 1 (2/2)"]
    assert "refit: EarlyStopping(monitor='val_loss') left out: the refit has no validation data to stop on" in lines
    final = [line for line in lines if line.startswith("final model: ")]
    assert len(final) == 1 and "samples; CV estimate val_acc " in final[0], first.stdout
    root = tmp_path / "cv_runs"
    record = json.loads((root / "final" / "refit.json").read_text())
    assert record["n_samples"] == 1437 and record["seed"] == 0 and 1 <= record["epochs"] <= 2
    manifest = json.loads((root / "cv_manifest.json").read_text())
    assert manifest["n_splits"] == 2 and "StratifiedKFold" in manifest["splitter"]
    assert "'max_epochs': 2" in manifest["config"]["trainer_kwargs"]
    assert manifest["config"]["callbacks"] == ["EarlyStopping", "LRWarmup"]
    assert "'hidden': 16" in manifest["config"]["hparams"]
    stamps = {p: p.stat().st_mtime_ns for p in [root / "final" / "model.pt", *root.glob("fold_*/fold_result.json")]}

    again = _run(tmp_path, "--cv.n_splits", "2", "--trainer.max_epochs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    skipped = [line for line in again.stdout.splitlines() if "finished in an earlier run, skipped" in line]
    assert len(skipped) == 3 and skipped[-1].startswith("final model: "), again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


class _ProjectCLI(LightningCLI):
    """A project's own LightningCLI: one argument of its own, linked into the DataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--batch", type=int, default=32)
        parser.link_arguments("batch", "data.init_args.batch_size")


class _ProjectCrossValidationCLI(CrossValidationCLI, _ProjectCLI):
    pass


def test_a_projects_own_lightning_cli_subclass_cross_validates(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG)
    del config["data"]["init_args"]["batch_size"]  # the project's link sets it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    flags = ["--batch", "64", "--trainer.max_epochs", "1", "--refit", "false"]
    cli = _ProjectCrossValidationCLI(args=["--config", str(tmp_path / "config.yaml"), *flags])
    assert cli.datamodule.batch_size == 64 and cli.model.hparams.hidden == 16
    assert cli.result is not None and len(cli.result.folds) == 3 and cli.refit_result is None
    assert not (tmp_path / "cv_runs" / "final").exists()
    assert all(fold.n_train + fold.n_val == 1437 for fold in cli.result.folds)
