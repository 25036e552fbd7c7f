"""The order map and the label map, logged with ``SummaryWriter.add_image`` and read back from the event files with
TensorBoard's ``EventAccumulator``: what a user sees is what the pictures claim (noise, a diagonal, a staircase)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from epochkit import ShuffleAudit
from epochkit.audit import images
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit
from tests.helpers import read_tensorboard


def _cells(image: np.ndarray, bins: int) -> np.ndarray:
    """The value of each cell back from its colour (viridis' green channel rises from 1 to 231), rows from the
    bottom (epoch start) up."""
    pixels = images.SIZE // bins
    centres = image[pixels // 2 :: pixels, pixels // 2 :: pixels, 1][:bins, :bins].astype(float)
    return centres[::-1]


def _fit_logged(tmp_path: Path, dm: AuditDataModule, epochs: int = 3, **kw: object) -> tuple[ShuffleAudit, object]:
    audit = ShuffleAudit(on_issue="log", **{"images": "raw", **kw})  # type: ignore[arg-type]
    fit([audit], dm, max_epochs=epochs, logger=TensorBoardLogger(tmp_path, name="tb"), log_every_n_steps=1)
    return audit, read_tensorboard(tmp_path / "tb")


def test_a_healthy_shuffle_draws_noise_and_an_even_label_map(tmp_path: Path) -> None:
    _, run = _fit_logged(tmp_path, AuditDataModule(n=384, batch_size=16, classes=4), labels=1)
    order_maps = run.image_arrays("shuffle_audit/order_map")
    label_maps = run.image_arrays("shuffle_audit/label_map")
    assert len(order_maps) == 2 and len(label_maps) == 3  # order: epochs 1 and 2 against the one before
    for image in order_maps + label_maps:
        assert image.dtype == np.uint8 and image.shape[2] in (3, 4) and max(image.shape[:2]) <= 256
    bins = images.order_bins(384)
    cells = _cells(order_maps[0], bins)
    assert cells.diagonal().mean() < cells.mean() + 40  # no diagonal: positions are unrelated
    assert cells.std() > 5  # noise, not a flat field
    shares = label_maps[-1][32::64, ::8, 1]  # 4 class rows of 64 px; columns of batches
    assert shares.max() < 225 and np.median(shares) > 60  # classes mixed in the batches, none alone


def test_a_replay_draws_the_diagonal(tmp_path: Path) -> None:
    _, run = _fit_logged(tmp_path, AuditDataModule(n=384, sampler=_data.fixed_permutation), epochs=2)
    (image,) = run.image_arrays("shuffle_audit/order_map")
    cells = _cells(image, images.order_bins(384))
    assert cells.diagonal().min() > 200  # bright yellow along the diagonal
    off = cells[~np.eye(cells.shape[0], dtype=bool)]
    assert off.max() < 10  # and nothing elsewhere


def test_sorted_data_draws_a_label_staircase(tmp_path: Path) -> None:
    dm = AuditDataModule(n=384, batch_size=16, classes=4, shuffle=False, sort_by_label=True)
    _, run = _fit_logged(tmp_path, dm, epochs=1, labels=1, ignore=["shuffle_off"])
    (image,) = run.image_arrays("shuffle_audit/label_map")
    rows = image[32::64, 1::2, 1]  # one row per class, one value per batch column (24 batches, 10 px each)
    dominant = rows.argmax(axis=0)
    assert list(dominant) == sorted(dominant) and set(dominant) == {0, 1, 2, 3}  # class 0 first, then 1, 2, 3
    assert rows.max() > 200


def test_images_can_be_turned_off_and_need_a_tensorboard_logger(tmp_path: Path) -> None:
    _, run = _fit_logged(tmp_path, AuditDataModule(), epochs=2, images=False)
    assert run.images == {}
    fit([ShuffleAudit(on_issue="raise")], AuditDataModule(), max_epochs=2)  # no logger: nothing to draw, no error


@pytest.mark.parametrize("n", [10, 100_000])
def test_the_pictures_stay_small_whatever_the_epoch(n: int) -> None:
    rng = np.random.default_rng(0)
    order = images.render_order_map(images.order_map(rng.permutation(n), rng.permutation(n)))
    table = rng.integers(0, 9, (128, 1000))  # 1000 classes in 128 columns of batches
    labels = images.render_label_map(images.label_map(table))
    assert order.shape[0] <= 256 and order.shape[1] <= 256 and labels.shape[0] <= 256 and labels.shape[1] <= 256
