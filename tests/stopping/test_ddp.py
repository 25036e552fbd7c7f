"""Two real ddp_spawn processes: the decision, best value, reason and restored weights agree on every rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

import epochkit
from epochkit.stopping import StoppingReason
from tests.helpers import RegressionDataModule, fit_ddp
from tests.stopping.scripted import ScriptedModule, Trace

pytestmark = pytest.mark.ddp  # every test here starts DDP processes


def _probe(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    es = trainer.early_stopping_callback
    (trace,) = [cb for cb in trainer.callbacks if isinstance(cb, Trace)]  # type: ignore[attr-defined]
    return {
        "best_epoch": es.best_epoch,
        "restored_epoch": getattr(es, "restored_epoch", None),
        "reason": es.stopping_reason,
        "weights_at_best": trace.weights.get(es.best_epoch),
        "seen_sum_per_epoch": [float(w["seen_sum"]) for _, w in sorted(trace.weights.items())],
    }


def _fit(tmp_path: Path, val: dict[int, list[float | None]], **es_kwargs: Any) -> list[Any]:
    es = epochkit.EarlyStopping(monitor="val_loss", **es_kwargs)
    return fit_ddp(
        ScriptedModule(val),
        RegressionDataModule(num_samples=32, batch_size=8),
        tmp_path,
        callbacks=[es, Trace()],
        probe=_probe,
        max_epochs=len(val[0]),
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        # Without DDP's buffer broadcast the ranks' buffers drift apart, as with unsynced BatchNorm statistics.
        strategy=DDPStrategy(start_method="spawn", broadcast_buffers=False),
    )


def test_ranks_with_different_or_missing_values_agree_and_restore_identical_weights(tmp_path: Path) -> None:
    # Unsynced metric: rank 0 plateaus (stop at epoch 3 with patience 2), rank 1 keeps improving and lacks the
    # metric in epochs 1 and 3; with strict=False that must neither hang nor split the ranks' decisions.
    val: dict[int, list[float | None]] = {0: [1.0, 0.8, 0.85, 0.9, 0.95, 0.99], 1: [1.0, None, 0.6, None, 0.4, 0.3]}
    r0, r1 = _fit(
        tmp_path, val, patience=2, strict=False, restore_best_weights=True, smoothing="mean", smoothing_window=1
    )
    for report in (r0, r1):
        assert report.error is None
        assert report.current_epoch == 4  # stopped after epoch 3 on both ranks
        assert report.extra["best_epoch"] == report.extra["restored_epoch"] == 1
        assert report.extra["reason"] is StoppingReason.PATIENCE_EXHAUSTED or report.extra["reason"].value == 3
    s0, s1 = (r.callback_states[epochkit.EarlyStopping(monitor="val_loss").state_key] for r in (r0, r1))
    assert s0.keys() == s1.keys()
    for key in s0:
        if key == "best_weights":
            continue
        if isinstance(s0[key], torch.Tensor):
            assert torch.equal(s0[key], s1[key]), key
        else:
            assert s0[key] == s1[key], key
    assert float(s0["best_score"]) == 0.800000011920929 and s0["stopping_reason"] == 3
    # The ranks' buffers differed at the best epoch; the restored module is rank 0's best state on both ranks.
    assert r0.extra["seen_sum_per_epoch"] != r1.extra["seen_sum_per_epoch"]
    best0 = r0.extra["weights_at_best"]
    for report in (r0, r1):
        assert report.model_state.keys() == best0.keys()
        assert all(torch.equal(report.model_state[k], best0[k]) for k in best0)


def test_metric_missing_on_one_rank_with_strict_true_raises_on_every_rank(tmp_path: Path) -> None:
    val: dict[int, list[float | None]] = {0: [1.0, 0.9], 1: [None, None]}
    with pytest.raises(Exception, match="not available"):
        _fit(tmp_path, val, patience=2)
    # Rank 0, which has the metric, raised the same error itself instead of waiting in a collective for rank 1 (a
    # hang under `ddp`; ddp_spawn would kill it, and a killed rank writes no report). Rank 1's report may be cut
    # short when the launcher tears the processes down after the first failure; the main process rewrites rank 0's
    # report with the worker's traceback.
    reports = [tmp_path / "rank_reports" / f"rank{r}.pt" for r in (0, 1)]
    assert reports[0].exists()
    for path in (p for p in reports if p.exists()):
        error = torch.load(path, weights_only=False)["error"]
        assert "Early stopping conditioned on metric `val_loss` which is not available" in error
        assert "missing on rank(s) [1] only" in error


class _SkipEpochsOneAndTwo(epochkit.EarlyStopping):
    """Overrides Lightning's ``_validate_condition_metric`` (module level: it is pickled into the workers)."""

    def _validate_condition_metric(self, logs: dict[str, torch.Tensor]) -> bool:
        return self._epoch not in (1, 2) and super()._validate_condition_metric(logs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = trainer.current_epoch
        super().on_train_epoch_end(trainer, pl_module)


def _probe_stop(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    es = trainer.early_stopping_callback
    return {"stopped_epoch": es.stopped_epoch, "best_score": es.best_score, "wait_count": es.wait_count}


def test_an_override_of_the_metric_check_is_honoured_on_every_rank(tmp_path: Path) -> None:
    """As on one process (test_lightning_parity.py): checks at epochs 0 and 3 only, so patience 1 stops at 3, not 1.
    Each rank asks its own override, and the ranks agree on the result."""
    val: dict[int, list[float | None]] = {0: [1.0, 1.1, 1.2, 1.3, 1.4], 1: [1.0, 1.1, 1.2, 1.3, 1.4]}
    reports = fit_ddp(
        ScriptedModule(val),
        RegressionDataModule(num_samples=32, batch_size=8),
        tmp_path,
        callbacks=[_SkipEpochsOneAndTwo(monitor="val_loss", patience=1)],
        probe=_probe_stop,
        max_epochs=5,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    for report in reports:
        assert report.error is None
        assert (report.current_epoch, report.extra["stopped_epoch"], report.extra["wait_count"]) == (4, 3, 1)
        best = report.extra["best_score"]
        # Lightning keeps best_score on the metric's device, with its dtype (a CPU float32 here).
        assert best.device == torch.device("cpu") and best.dtype == torch.float32 and float(best) == 1.0
