"""What a user sees of the audit without asking: the console (through Lightning's rank-zero logger), the errors
for a wrong batch key, and the pictures in TensorBoard."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, IterableDataset

from epochkit import ShuffleAudit
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit
from tests.helpers import DigitsClassifier, quiet_trainer, read_tensorboard


class _Console(logging.Handler):
    """Every record that reaches Lightning's ``lightning.pytorch`` logger, where its console handler hangs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.logger = logging.getLogger("lightning.pytorch")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> _Console:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def test_the_summary_reaches_lightnings_console_once_per_fit() -> None:
    with _Console() as console, pytest.warns(UserWarning, match="order_unchanged"):
        fit([ShuffleAudit()], AuditDataModule(sampler=_data.fixed_permutation), max_epochs=3)
    audit_lines = [line for line in console.lines if line.startswith("ShuffleAudit")]
    # The issue of epochs 1 and 2 is a warning (once); the console has the fit's summary, once, at its end.
    assert audit_lines == ["ShuffleAudit: 3 epochs audited, 2 issues: order_unchanged (epochs 1, 2)."]
    assert console.lines[-1] == audit_lines[0]
    assert console.logger.getEffectiveLevel() <= logging.INFO  # shown by default, like Lightning's own lines

    with _Console() as console:
        fit([ShuffleAudit()], AuditDataModule(), max_epochs=2)
    assert [line for line in console.lines if line.startswith("ShuffleAudit")] == [
        "ShuffleAudit: 2 epochs audited, no issue: every epoch was a fresh, complete shuffle."
    ]


def test_a_notice_reaches_the_console_once_per_fit() -> None:
    with _Console() as console, pytest.warns(UserWarning, match="iterable_replicated"):
        fit([ShuffleAudit()], AuditDataModule(kind="stream", num_workers=2), max_epochs=2)
    notices = [line for line in console.lines if line.startswith("ShuffleAudit fit start: iterable_workers")]
    assert len(notices) == 1
    assert sum(line.startswith("ShuffleAudit: 2 epochs audited") for line in console.lines) == 1


class _DictSet(Dataset):
    """Map-style data whose batches are dicts ``{"x", "labels"}`` (Hugging Face style)."""

    def __init__(self, n: int = 64) -> None:
        self.x, self.y = _data.make_tensors(n, 4, 0)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


class _DictStream(IterableDataset):
    """The same as a stream with an ``idx`` column (no sampler indices: ids come from ``sample_ids=``)."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        x, y = _data.make_tensors(64, 4, 0)
        for i in range(len(y)):
            yield {"idx": i, "x": x[i], "labels": y[i]}


class _DictModel(DigitsClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step((batch["x"], batch["labels"]), batch_idx)


@pytest.mark.parametrize(
    ("kwargs", "dataset", "match"),
    [
        (
            {"labels": "label"},
            _DictSet,
            r"ShuffleAudit\(labels='label'\): the training batch \(a dict\) has no key 'label'; "
            r"its keys are \['x', 'labels'\]",
        ),
        (
            {"sample_ids": "id"},
            _DictStream,
            r"ShuffleAudit\(sample_ids='id'\): the training batch \(a dict\) has no key 'id'; "
            r"its keys are \['idx', 'x', 'labels'\]",
        ),
        ({"labels": 2}, _DictSet, r"ShuffleAudit\(labels=2\): the training batch \(a dict\) has no key 2"),
    ],
    ids=["labels", "sample_ids", "int_key"],
)
def test_a_wrong_batch_key_names_the_argument_and_the_keys_there_are(
    kwargs: dict[str, Any], dataset: type, match: str
) -> None:
    trainer = quiet_trainer(None, [ShuffleAudit(**kwargs)], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=match):
        trainer.fit(_DictModel(hidden=8), DataLoader(dataset(), batch_size=16))
    # The right key works: the audit reads the labels of every batch.
    right = {k: "labels" if k == "labels" else "idx" for k in kwargs}
    audit = ShuffleAudit(**right)
    trainer = quiet_trainer(None, [audit], max_epochs=1, limit_val_batches=0)
    trainer.fit(_DictModel(hidden=8), DataLoader(dataset(), batch_size=16))
    assert not audit.verdicts_[0].issues and audit.verdicts_[0].metrics


def test_a_wrong_key_into_tuple_batches_names_the_positions() -> None:
    trainer = quiet_trainer(None, [ShuffleAudit(labels="labels")], max_epochs=1, limit_val_batches=0)
    with pytest.raises(
        ValueError,
        match=r"labels='labels'\): the training batch \(a list of 2\) has no key 'labels'; "
        r"its keys are 0\.\.1",
    ):
        trainer.fit(
            DigitsClassifier(hidden=8), DataLoader(_data.LabelledSet(*_data.make_tensors(32, 4, 0)), batch_size=16)
        )


# ------------------------------------------------------------------------------------------------- pictures

#: The plot's axes in pixels of the 640 x 480 image (epochkit.audit.images._axes): columns, then rows.
_AXES = (slice(70, 495), slice(62, 370))


def _yellow_in_axes(image: np.ndarray) -> int:
    """Pixels of viridis' top colour (yellow: the most samples) inside the plot's axes."""
    region = image[_AXES[1], _AXES[0], :3].astype(int)
    return int((np.abs(region - np.array([253, 231, 37])).sum(axis=-1) < 40).sum())


def test_the_maps_are_plots_with_a_legend_and_the_verdict(tmp_path: Path) -> None:
    shown = {}
    for name, dm in (
        ("bug", AuditDataModule(n=384, sampler=_data.fixed_permutation)),
        ("sorted", AuditDataModule(n=384, shuffle=False, sort_by_label=True)),
        ("healthy", AuditDataModule(n=384)),
    ):
        logger = TensorBoardLogger(tmp_path, name=name)
        fit([ShuffleAudit(on_issue="log", labels=1)], dm, max_epochs=2, logger=logger, log_every_n_steps=1)
        run = read_tensorboard(tmp_path / name)
        for tag in ("shuffle_audit/order_map", "shuffle_audit/label_map"):
            image = run.image_arrays(tag)[-1]
            assert image.shape[:2] == (480, 640)  # a plot, not the raw map (at most 256 x 256)
            shown[name, tag.rsplit("/", 1)[1]] = image
            (tmp_path / f"{name}_{tag.rsplit('/', 1)[1]}.png").write_bytes(run.images[tag][-1][1])
    # Both plots carry a colour bar, whose top is yellow, right of the axes.
    for image in shown.values():
        assert (np.abs(image[59:62, 522:530, :3].astype(int) - [253, 231, 37]).sum(axis=-1) < 40).all()
    # A replay is a bright diagonal; a fresh shuffle has no cell near the top of the scale.
    assert _yellow_in_axes(shown["bug", "order_map"]) > 2000
    assert _yellow_in_axes(shown["healthy", "order_map"]) == 0
    # Sorted labels: one-class batches (a staircase of yellow cells); shuffled: every class in every batch.
    assert _yellow_in_axes(shown["sorted", "label_map"]) > 10_000
    assert _yellow_in_axes(shown["healthy", "label_map"]) == 0


def test_without_matplotlib_the_raw_maps_are_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `import matplotlib` raises ImportError from here on, as where the plot extra is not installed (Lightning and
    # torchmetrics, imported already, keep the modules they loaded).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit([ShuffleAudit(on_issue="log")], AuditDataModule(), max_epochs=2, logger=logger)
    run = read_tensorboard(tmp_path / "tb")
    shapes = {tag: run.image_arrays(tag)[-1].shape for tag in run.images}
    assert set(shapes) == {"shuffle_audit/order_map", "shuffle_audit/label_map"}
    assert all(max(shape[:2]) <= 256 for shape in shapes.values())  # today's raw maps (tests/audit/test_images.py)
    with pytest.raises(
        ImportError, match=r"ShuffleAudit\(images='plot'\) needs matplotlib: `pip install epochkit\[plot"
    ):
        fit([ShuffleAudit(images="plot")], AuditDataModule(), max_epochs=1)


def test_plots_are_drawn_at_epochs_0_1_2_4_8_and_at_every_finding_raw_maps_every_epoch(tmp_path: Path) -> None:
    # A plot costs about 0.1 s: a healthy long fit draws O(log epochs) of them, a fit with findings draws each.
    counts = {}
    for name, dm, images in (
        ("healthy", AuditDataModule(n=96), True),
        ("bug", AuditDataModule(n=96, sampler=_data.fixed_permutation), True),
        ("raw", AuditDataModule(n=96), "raw"),
    ):
        logger = TensorBoardLogger(tmp_path, name=name)
        fit([ShuffleAudit(on_issue="log", labels=1, images=images)], dm, max_epochs=6, logger=logger)
        run = read_tensorboard(tmp_path / name)
        counts[name] = {tag.rsplit("/", 1)[1]: len(run.images[tag]) for tag in run.images}
    assert counts["healthy"] == {"label_map": 4, "order_map": 3}  # epochs 0, 1, 2, 4 (no order map at epoch 0)
    assert counts["bug"]["order_map"] == 5  # a replay every epoch from epoch 1: a finding, so a plot, each time
    assert counts["raw"] == {"label_map": 6, "order_map": 5}
