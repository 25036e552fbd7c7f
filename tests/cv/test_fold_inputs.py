"""What a user hands the cross-validator cannot silently go wrong: ``cv_dataloader``'s stage names are checked, a
training loader that does not shuffle is warned about, ``labels=`` finds a Hugging Face column or a dict sample key,
and an already-trained model is warned about before the first fold."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from torch.utils.data import DataLoader

from epochkit import CrossValidator
from tests.helpers import QUIET, RegressionDataModule, RegressionModule, quiet_trainer

KWARGS: dict[str, Any] = {**QUIET, "max_epochs": 1}


class _GuessedStage(RegressionDataModule):
    """Builds the fold loaders itself, with a stage name of its own choosing (`guess`) for training."""

    def __init__(self, guess: str, shuffle_train: bool = True) -> None:
        super().__init__(num_samples=24, batch_size=4)
        self.guess = guess
        self.shuffle_train = shuffle_train

    def cv_dataloader(self, dataset: Any, stage: str) -> DataLoader:
        if stage == self.guess:
            return DataLoader(dataset, batch_size=4, shuffle=self.shuffle_train)
        return DataLoader(dataset, batch_size=8)


def test_a_stage_name_cv_dataloader_does_not_know_is_an_error_naming_the_stages(tmp_path: Path) -> None:
    cv = CrossValidator(2, root_dir=tmp_path / "fit", verbose=False)
    with pytest.raises(ValueError, match=r"compared with 'fit', which is no stage; the stages are 'train', 'val'"):
        cv.fit(RegressionModule(), _GuessedStage("fit"), trainer_kwargs=KWARGS)
    assert not list((tmp_path / "fit").glob("fold_*/fold_result.json"))

    class _LightningNames(_GuessedStage):
        def cv_dataloader(self, dataset: Any, stage: str) -> DataLoader:
            shuffle = stage not in ("validate", "predict")  # Lightning's name for validation is accepted
            return DataLoader(dataset, batch_size=4, shuffle=shuffle)

    result = CrossValidator(2, root_dir=tmp_path / "ok", verbose=False).fit(
        RegressionModule(), _LightningNames("train"), trainer_kwargs=KWARGS
    )
    assert len(result.folds) == 2


def test_a_fold_training_loader_that_does_not_shuffle_warns_naming_where_it_comes_from(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"from RegressionDataModule\.train_dataloader\(\), does not shuffle"):
        CrossValidator(2, root_dir=tmp_path / "a", verbose=False).fit(
            RegressionModule(), RegressionDataModule(num_samples=24, shuffle=False), trainer_kwargs=KWARGS
        )
    with pytest.warns(UserWarning, match=r"from _GuessedStage\.cv_dataloader\(dataset, 'train'\), does not shuffle"):
        CrossValidator(2, root_dir=tmp_path / "b", verbose=False).fit(
            RegressionModule(), _GuessedStage("train", shuffle_train=False), trainer_kwargs=KWARGS
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CrossValidator(2, root_dir=tmp_path / "c", verbose=False).fit(
            RegressionModule(), RegressionDataModule(num_samples=24), trainer_kwargs=KWARGS
        )
    assert not [w for w in caught if "does not shuffle" in str(w.message)]


class _TableData(RegressionDataModule):
    """Its training set is whatever `make` builds: a Hugging Face dataset or a list of dict samples."""

    def __init__(self, table: Any) -> None:
        super().__init__()
        self.table = table

    def setup(self, stage: str) -> None:
        self.train_set = self.table


LABELS = [0] * 12 + [1] * 6  # 2:1, so that an unstratified split would break the ratio in some fold


@pytest.mark.parametrize("kind", ["hf", "dicts"])
def test_labels_name_a_hugging_face_column_or_a_key_of_dict_samples(kind: str) -> None:
    rows = {"x": [[float(i)] for i in range(len(LABELS))], "label": LABELS}
    dicts = [{"x": x, "label": y} for x, y in zip(rows["x"], rows["label"], strict=True)]
    table: Any = datasets.Dataset.from_dict(rows) if kind == "hf" else dicts
    plan = CrossValidator(3, stratify=True, labels="label", verbose=False).plan(_TableData(table))
    for val in plan.val:
        assert sorted(np.asarray(LABELS)[val].tolist()) == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"`labels='target'` names no attribute, column or sample key") as err:
        CrossValidator(3, stratify=True, labels="target", verbose=False).plan(_TableData(table))
    have = "its columns are ['x', 'label']" if kind == "hf" else "its samples are dicts with the keys ['label', 'x']"
    assert have in str(err.value)


def test_an_already_trained_model_warns_before_the_first_fold(tmp_path: Path) -> None:
    data = RegressionDataModule(num_samples=24)
    model = RegressionModule()
    quiet_trainer(tmp_path, max_epochs=1).fit(model, data)
    with pytest.warns(UserWarning, match=r"trained already \(global_step=3\).*estimate is optimistic"):
        CrossValidator(2, root_dir=tmp_path / "a", verbose=False).fit(model, data, trainer_kwargs=KWARGS)

    fresh = RegressionModule()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cv = CrossValidator(2, root_dir=tmp_path / "b", verbose=False)
        cv.fit(fresh, data, trainer_kwargs=KWARGS)
        cv.fit(fresh, data, trainer_kwargs=KWARGS)  # a rerun on the model a CV gave back: it is at its start again
        CrossValidator(2, reset="reinit", root_dir=tmp_path / "c", verbose=False).fit(
            model, data, trainer_kwargs=KWARGS
        )
    assert not [w for w in caught if "trained already" in str(w.message)]
