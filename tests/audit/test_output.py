"""What a user sees of the audit without asking: the console (through Lightning's rank-zero logger), the errors
for a wrong batch key, and the pictures in TensorBoard."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from epochkit import ShuffleAudit
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit
from tests.helpers import DigitsClassifier, quiet_trainer


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
