"""LRWarmup with a real Trainer: the LR each applied step really used is measured from the SGD update itself
(``lr = (p_before - p_after) / grad``), independently of what the callback reports."""

from __future__ import annotations

import functools
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, IterableDataset

from epochkit import LRWarmup, schedules
from epochkit.schedules import warmup_factor
from tests.helpers import RegressionDataModule, RegressionModule, fit_ddp, quiet_trainer, read_tensorboard

BASE_LR = 0.1


class EffectiveLR(Callback):
    """Measures the LR each optimizer step applied, and the LR the user's schedule set (``LearningRateMonitor``'s
    view at batch start), per optimizer. Requires plain SGD (no momentum, no weight decay)."""

    def __init__(self) -> None:
        self.scheduled: dict[int, list[float]] = {}
        self.used: dict[int, list[list[float]]] = {}
        self.moved: dict[int, list[float]] = {}
        self._before: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        for k, opt in enumerate(trainer.optimizers):
            self.scheduled.setdefault(k, []).append(float(opt.param_groups[0]["lr"]))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        k = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        if all(p.grad is None for g in optimizer.param_groups for p in g["params"]):
            return  # a skipped batch (training_step returned None): nothing will be applied
        self._before[k] = [
            (p.detach().clone(), p.grad.detach().clone()) for g in optimizer.param_groups for p in g["params"]
        ]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        for k, before in self._before.items():
            opt = trainer.optimizers[k]
            per_group, pos, moved = [], 0, 0.0
            for group in opt.param_groups:
                ratios = []
                for p in group["params"]:
                    p0, grad = before[pos]
                    pos += 1
                    mask = grad.abs() > 1e-8
                    moved = max(moved, float((p0 - p.detach()).abs().max()))
                    ratios.append(((p0 - p.detach()) / grad)[mask])
                change = torch.cat(ratios)
                per_group.append(float(change.median()) if change.numel() else math.nan)
            self.used.setdefault(k, []).append(per_group)
            self.moved.setdefault(k, []).append(moved)
        self._before = {}

    def state_dict(self) -> dict[str, Any]:
        return {"scheduled": self.scheduled, "used": self.used}


class SchedModule(RegressionModule):
    """SGD on the regression task with one of the scheduler kinds; ``val_loss`` is scripted (constant) so that
    ReduceLROnPlateau decides the same with and without warmup."""

    def __init__(self, scheduler: str = "none", total: int = 12, groups: int = 1) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.total = total
        self.groups = groups

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(1.0, dtype=torch.float64))

    def configure_optimizers(self) -> Any:
        if self.groups == 2:
            params: Any = [
                {"params": [self.layer.weight], "lr": BASE_LR},
                {"params": [self.layer.bias], "lr": BASE_LR / 10},
            ]
        else:
            params = self.parameters()
        opt = torch.optim.SGD(params, lr=BASE_LR)
        s = torch.optim.lr_scheduler
        # Built lazily: some constructors (OneCycleLR) rewrite the optimizer's LR and momentum.
        kinds: dict[str, Any] = {
            "none": lambda: None,
            "step_epoch": lambda: {"scheduler": s.StepLR(opt, step_size=1, gamma=0.5), "interval": "epoch"},
            "lambda_step": lambda: {"scheduler": s.LambdaLR(opt, lambda k: 1.0 / (1.0 + k)), "interval": "step"},
            "exponential_step": lambda: {"scheduler": s.ExponentialLR(opt, gamma=0.8), "interval": "step"},
            "onecycle": lambda: {
                # cycle_momentum would give SGD momentum, which the effective-LR probe cannot see through.
                "scheduler": s.OneCycleLR(opt, max_lr=BASE_LR, total_steps=self.total, cycle_momentum=False),
                "interval": "step",
            },
            "plateau": lambda: {
                "scheduler": s.ReduceLROnPlateau(opt, factor=0.5, patience=0),
                "monitor": "val_loss",
                "interval": "epoch",
            },
        }
        sched = kinds[self.scheduler]()
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


def _trainer(root: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(root, callbacks, **{"max_epochs": 3, "precision": "64-true", **kwargs})


def _data(**kwargs: Any) -> RegressionDataModule:
    return RegressionDataModule(**{"num_samples": 32, "batch_size": 8, "shuffle": False, **kwargs})


def _w(k: int, length: int, shape: str = "linear", start: float = 0.0) -> float:
    return float(warmup_factor(k, length, shape, start))  # type: ignore[arg-type]


@pytest.mark.parametrize("scheduler", ["none", "step_epoch", "lambda_step", "exponential_step", "onecycle", "plateau"])
def test_warmup_multiplies_the_users_schedule_which_evolves_as_without_it(scheduler: str, tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("plain", []), ("warm", [LRWarmup(steps=6)])):
        pl.seed_everything(0)
        probe = EffectiveLR()
        _trainer(tmp_path / name, [*extra, probe]).fit(SchedModule(scheduler), datamodule=_data())
        runs[name] = probe
    plain, warm = runs["plain"], runs["warm"]
    # The user's scheduler (what LearningRateMonitor shows) is untouched by the warmup.
    assert warm.scheduled[0] == pytest.approx(plain.scheduled[0], rel=1e-12)
    if scheduler != "none":
        assert len(set(plain.scheduled[0])) > 1, "the scheduler under test never changed the LR"
    # The LR the 12 steps really used: the schedule times w(k), never 0, exactly the schedule from step 6 on.
    used = [u[0] for u in warm.used[0]]
    expected = [lr * _w(k, 6) for k, lr in enumerate(warm.scheduled[0])]
    assert len(used) == 12
    assert used == pytest.approx(expected, rel=1e-9)
    assert used[0] > 0
    assert used[6:] == pytest.approx(warm.scheduled[0][6:], rel=1e-9)
    assert [u[0] for u in plain.used[0]] == pytest.approx(plain.scheduled[0], rel=1e-9)


def test_every_param_group_warms_up_from_its_own_lr_and_cosine_shape(tmp_path: Path) -> None:
    probe = EffectiveLR()
    warmup = LRWarmup(steps=5, shape="cosine", start_factor=0.2)
    _trainer(tmp_path, [warmup, probe], max_epochs=2).fit(SchedModule(groups=2), datamodule=_data())
    for k, (lr_w, lr_b) in enumerate(probe.used[0]):
        w = _w(k, 5, "cosine", 0.2)
        assert lr_w == pytest.approx(BASE_LR * w, rel=1e-9)
        assert lr_b == pytest.approx(BASE_LR / 10 * w, rel=1e-9)
    # Counting stops with the warmup: the hooks are gone afterwards.
    assert warmup.state_dict() == {"steps_applied": [5], "warmup_steps": [[5, 5]], "group_starts": [[0, 0]]}
    assert len(probe.used[0]) == 8


def test_accumulation_counts_one_step_per_optimizer_step(tmp_path: Path) -> None:
    probe = EffectiveLR()
    warmup = LRWarmup(epochs=1.5)
    trainer = _trainer(tmp_path, [warmup, probe], accumulate_grad_batches=2)
    trainer.fit(SchedModule(), datamodule=_data())
    # 4 batches an epoch, 2 accumulated: 2 steps an epoch, so 1.5 epochs are 3 warmup steps; 6 steps in all.
    assert warmup.warmup_steps_ == [[3]]
    assert warmup.steps_applied_ == [3] and trainer.global_step == 6
    assert [u[0] for u in probe.used[0]] == pytest.approx([BASE_LR * _w(k, 3) for k in range(6)], rel=1e-9)


class SkipsSteps(SchedModule):
    """Its own optimizer_step skips batches 1 and 2 (runs the closure, never calls optimizer.step)."""

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        if batch_idx in (1, 2):
            optimizer_closure()
            return
        optimizer.step(closure=optimizer_closure)


def test_a_step_the_module_skips_does_not_advance_the_warmup(tmp_path: Path) -> None:
    probe = EffectiveLR()
    warmup = LRWarmup(steps=6)
    trainer = _trainer(tmp_path, [warmup, probe], max_epochs=2)
    trainer.fit(SkipsSteps(), datamodule=_data())
    # 8 batches, 4 skipped (two an epoch): 4 applied steps, each using the next warmup factor.
    assert warmup.steps_applied_ == [4]
    assert [u[0] for u in probe.used[0]] == pytest.approx([BASE_LR * _w(k, 6) for k in range(4)], rel=1e-9)


class Overflows(SchedModule):
    """fp16 AMP: batch 1's loss overflows, so the GradScaler skips that optimizer step."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * (1e38 if batch_idx == 1 else 1.0)


class ScaleWatch(Callback):
    def __init__(self) -> None:
        self.scales: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.scales.append(float(trainer.precision_plugin.scaler.get_scale()))  # type: ignore[attr-defined]


def test_a_step_amp_skipped_does_not_advance_the_warmup(tmp_path: Path) -> None:
    probe, watch, warmup = EffectiveLR(), ScaleWatch(), LRWarmup(steps=4)
    amp = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=8.0))
    trainer = _trainer(tmp_path, [warmup, probe, watch], max_epochs=1, precision=None, plugins=[amp])
    trainer.fit(Overflows(), datamodule=_data())
    # The scaler halves its scale exactly when it skips a step; Lightning's global_step counts skipped steps too.
    scales = watch.scales
    skipped = [i for i, s in enumerate(scales) if s < [8.0, *scales][i]]
    assert skipped == [1]
    assert trainer.global_step == 4
    assert warmup.steps_applied_ == [3]
    applied = [u[0] for i, u in enumerate(probe.used[0]) if i not in skipped]
    assert applied == pytest.approx([BASE_LR * _w(k, 4) for k in range(3)], rel=2e-3)  # fp16 gradients
    assert probe.moved[0][1] == 0.0 and all(m > 0 for i, m in enumerate(probe.moved[0]) if i != 1)


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: the generator-like optimizer steps every batch, the other every second batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a = torch.nn.Linear(8, 2)
        self.b = torch.nn.Linear(8, 2)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        opt_a, opt_b = self.optimizers()  # type: ignore[misc]
        loss_a = torch.nn.functional.mse_loss(self.a(x), y)
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        if batch_idx % 2 == 0:
            loss_b = torch.nn.functional.mse_loss(self.b(x), y)
            opt_b.zero_grad()
            self.manual_backward(loss_b)
            opt_b.step()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.a.parameters(), lr=BASE_LR), torch.optim.SGD(self.b.parameters(), lr=0.05)


def test_manual_optimization_counts_each_optimizer_on_its_own(tmp_path: Path) -> None:
    probe, warmup = EffectiveLR(), LRWarmup(steps=6)
    _trainer(tmp_path, [warmup, probe], max_epochs=2).fit(TwoOptimizers(), datamodule=_data())
    assert warmup.steps_applied_ == [6, 4]  # the first finished its warmup; the second is 4 steps in
    assert [u[0] for u in probe.used[0]] == pytest.approx([BASE_LR * _w(k, 6) for k in range(8)], rel=1e-9)
    assert [u[0] for u in probe.used[1]] == pytest.approx([0.05 * _w(k, 6) for k in range(4)], rel=1e-9)


def test_untuned_reads_beta2_per_group_and_logs_the_lr_used(tmp_path: Path) -> None:
    class AdamGroups(SchedModule):
        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(
                [
                    {"params": [self.layer.weight], "lr": 1e-3, "betas": (0.9, 0.99)},
                    {"params": [self.layer.bias], "lr": 1e-2, "betas": (0.9, 0.98)},
                ]
            )

    warmup = LRWarmup(steps="untuned")
    trainer = _trainer(tmp_path, [warmup], max_epochs=1, logger=TensorBoardLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(AdamGroups(), datamodule=_data())
    assert warmup.warmup_steps_ == [[200, 100]]  # 2 / (1 - beta2)
    run = read_tensorboard(tmp_path)
    for tag in ("warmup/lr", "warmup/lr/pg1", "warmup/factor"):
        assert [step for step, _ in run.scalars[tag]] == [0, 1, 2, 3], tag
    assert run.scalar_values("warmup/lr") == pytest.approx([1e-3 * (k + 1) / 200 for k in range(4)])
    assert run.scalar_values("warmup/lr/pg1") == pytest.approx([1e-2 * (k + 1) / 100 for k in range(4)])
    assert run.scalar_values("warmup/factor") == pytest.approx([(k + 1) / 200 for k in range(4)])


def test_logging_stops_with_the_warmup(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path, [LRWarmup(steps=3)], max_epochs=2, logger=TensorBoardLogger(tmp_path), log_every_n_steps=1
    )
    trainer.fit(SchedModule(), datamodule=_data())
    lrs = read_tensorboard(tmp_path).scalars["warmup/lr"]
    assert [step for step, _ in lrs] == [0, 1, 2]
    assert [lr for _, lr in lrs] == pytest.approx([BASE_LR / 3, 2 * BASE_LR / 3, BASE_LR])


def test_untuned_without_betas_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"param group 0 of optimizer 0 \(SGD\) has no `betas`"):
        _trainer(tmp_path, [LRWarmup(steps="untuned")]).fit(SchedModule(), datamodule=_data())


def test_resume_mid_warmup_uses_the_same_lrs_as_an_uninterrupted_run(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt: str | None = None) -> tuple[EffectiveLR, pl.LightningModule]:
        pl.seed_everything(0)
        probe, model = EffectiveLR(), SchedModule("exponential_step")
        ckpt_cb = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
        trainer = _trainer(root, [LRWarmup(steps=10), probe, ckpt_cb], max_epochs=max_epochs, enable_checkpointing=True)
        trainer.fit(model, datamodule=_data(), ckpt_path=ckpt)
        return probe, model

    full, full_model = run(tmp_path / "full", 4)
    run(tmp_path / "first", 2)  # stops after 8 of 10 warmup steps
    resumed, resumed_model = run(tmp_path / "second", 4, ckpt=str(tmp_path / "first" / "ckpt" / "last.ckpt"))
    assert len(resumed.used[0]) == 8
    assert [u[0] for u in resumed.used[0]] == pytest.approx([u[0] for u in full.used[0][8:]], rel=1e-12)
    # Lightning loads a "64-true" checkpoint into the module before casting it to float64, so the resumed weights
    # went through float32 once (plain Lightning shows the same ~1e-8 difference without any callback).
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name


def test_tensor_lr_is_scaled_in_place_and_restored(tmp_path: Path) -> None:
    class TensorLR(SchedModule):
        def configure_optimizers(self) -> Any:
            self.lr_tensor = torch.tensor(BASE_LR, dtype=torch.float64)
            return torch.optim.SGD(self.parameters(), lr=self.lr_tensor)

    model, probe = TensorLR(), EffectiveLR()
    _trainer(tmp_path, [LRWarmup(steps=4), probe], max_epochs=2).fit(model, datamodule=_data())
    assert [u[0] for u in probe.used[0]] == pytest.approx([BASE_LR * _w(k, 4) for k in range(8)], rel=1e-9)
    group_lr = model.trainer.optimizers[0].param_groups[0]["lr"]
    assert group_lr is model.lr_tensor and float(group_lr) == BASE_LR


class SharedTensorLR(SchedModule):
    """Two param groups that inherit one LR tensor from the optimizer's defaults (as ``AdamW(groups, lr=tensor)``
    with weight-decay groups does)."""

    def configure_optimizers(self) -> Any:
        self.lr_tensor = torch.tensor(BASE_LR, dtype=torch.float64)
        groups = [{"params": [self.layer.weight]}, {"params": [self.layer.bias]}]
        return torch.optim.SGD(groups, lr=self.lr_tensor)


def test_groups_sharing_one_tensor_lr_are_scaled_once(tmp_path: Path) -> None:
    model, probe = SharedTensorLR(), EffectiveLR()
    _trainer(tmp_path, [LRWarmup(steps=4), probe], max_epochs=2).fit(model, datamodule=_data())
    expected = [BASE_LR * _w(k, 4) for k in range(8)]
    assert [u[0] for u in probe.used[0]] == pytest.approx(expected, rel=1e-9)
    assert [u[1] for u in probe.used[0]] == pytest.approx(expected, rel=1e-9)
    assert float(model.lr_tensor) == BASE_LR  # restored exactly, not left scaled


def test_groups_sharing_one_tensor_lr_but_needing_different_factors_fail_clearly(tmp_path: Path) -> None:
    class Unfreezes(SharedTensorLR):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if self.trainer.global_step == 2:  # a new group inherits the shared tensor in the middle of warmup
                extra = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
                self.extra = extra
                self.trainer.optimizers[0].add_param_group({"params": [extra]})

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            extra = getattr(self, "extra", None)
            return loss if extra is None else loss + extra.sum() ** 2

    model = Unfreezes()
    with pytest.raises(ValueError, match=r"param groups 0 and 2 of optimizer 0 share one LR tensor but need different"):
        _trainer(tmp_path, [LRWarmup(steps=4)], max_epochs=1).fit(model, datamodule=_data())
    assert float(model.lr_tensor) == BASE_LR  # nothing was left scaled


class EpochOfLogging(TensorBoardLogger):
    """A real TensorBoard logger that also notes the epoch and batch each ``warmup/lr`` value reached it in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[int, int, int]] = []  # (step logged at, epoch, batches done when it arrived)
        self.trainer: pl.Trainer | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "warmup/lr" in metrics and self.trainer is not None:
            loop = self.trainer.fit_loop.epoch_loop
            self.arrivals.append((int(step or 0), self.trainer.current_epoch, loop.batch_progress.current.completed))
        super().log_metrics(metrics, step)


def test_tensor_lrs_are_logged_at_their_steps_with_one_host_read_per_epoch(tmp_path: Path) -> None:
    class TensorLR(SchedModule):
        def configure_optimizers(self) -> Any:
            groups = [
                {"params": [self.layer.weight], "lr": torch.tensor(BASE_LR, dtype=torch.float64)},
                {"params": [self.layer.bias], "lr": torch.tensor(BASE_LR / 10, dtype=torch.float64)},
            ]
            return torch.optim.SGD(groups)

    logger = EpochOfLogging(tmp_path)
    trainer = _trainer(tmp_path, [LRWarmup(steps=6)], max_epochs=2, logger=logger, log_every_n_steps=1)
    logger.trainer = trainer
    trainer.fit(TensorLR(), datamodule=_data())
    run = read_tensorboard(tmp_path)
    # The same steps and values as with float LRs, for every param group.
    for tag, base in (("warmup/lr", BASE_LR), ("warmup/lr/pg1", BASE_LR / 10)):
        assert [step for step, _ in run.scalars[tag]] == [0, 1, 2, 3, 4, 5], tag
        assert run.scalar_values(tag) == pytest.approx([base * _w(k, 6) for k in range(6)], rel=1e-6)  # float32
    assert [step for step, _ in run.scalars["warmup/factor"]] == [0, 1, 2, 3, 4, 5]
    # ...read from the device once per epoch: all of an epoch's values arrive after its last batch (4 an epoch).
    assert logger.arrivals == [(0, 0, 4), (1, 0, 4), (2, 0, 4), (3, 0, 4), (4, 1, 4), (5, 1, 4)]


def test_hooks_are_removed_when_fit_ends(tmp_path: Path) -> None:
    model = SchedModule()
    trainer = _trainer(tmp_path, [LRWarmup(steps=100)], max_epochs=1)
    trainer.fit(model, datamodule=_data())
    optimizer = trainer.optimizers[0]
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert optimizer.param_groups[0]["lr"] == BASE_LR


@pytest.mark.ddp
def test_ddp_ranks_warm_up_identically(tmp_path: Path) -> None:
    reports = fit_ddp(
        SchedModule("lambda_step"),
        _data(num_samples=64),
        tmp_path,
        callbacks=[LRWarmup(steps=5), EffectiveLR()],
        max_epochs=2,
        precision="64-true",
    )
    warm0, warm1 = (r.callback_states[LRWarmup(steps=5).state_key] for r in reports)
    # 64 samples / 2 ranks / batch 8 = 4 steps an epoch on each rank.
    assert warm0 == warm1 == {"steps_applied": [5], "warmup_steps": [[5]], "group_starts": [[0]]}
    used0, used1 = (r.callback_states["EffectiveLR"]["used"][0] for r in reports)
    scheduled = reports[0].callback_states["EffectiveLR"]["scheduled"][0]
    assert [u[0] for u in used0] == pytest.approx([u[0] for u in used1], rel=1e-12)
    assert [u[0] for u in used0] == pytest.approx([lr * _w(k, 5) for k, lr in enumerate(scheduled)], rel=1e-9)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "Give exactly one of `steps`, `epochs` or `fraction` to LRWarmup, got none"),
        ({"steps": 3, "epochs": 1.0}, "got `steps`, `epochs`"),
        ({"steps": 0}, r"`steps` must be an int >= 1 or 'untuned', got 0"),
        ({"steps": "tuned"}, r"`steps` must be an int >= 1 or 'untuned', got 'tuned'"),
        ({"epochs": 0.0}, r"LRWarmup\(epochs=0.0\): must be a finite number > 0.0; got float 0.0"),
        ({"fraction": 1.5}, r"LRWarmup\(fraction=1.5\): must be a finite number > 0.0 and <= 1.0; got float 1.5"),
        ({"steps": 3, "shape": "exp"}, r"`shape` must be one of \('linear', 'cosine'\), got 'exp'"),
        ({"steps": 3, "start_factor": -0.1}, r"`start_factor` must lie in \[0, 1\), got -0.1"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LRWarmup(**kwargs)


def test_fraction_of_an_endless_run_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"LRWarmup\(fraction=0.1\) needs the run's length"):
        _trainer(tmp_path, [LRWarmup(fraction=0.1)], max_epochs=-1).fit(SchedModule(), datamodule=_data())


def test_fraction_resolves_against_the_runs_steps(tmp_path: Path) -> None:
    warmup = LRWarmup(fraction=0.25)
    _trainer(tmp_path, [warmup], max_epochs=3).fit(SchedModule(), datamodule=_data())
    assert warmup.warmup_steps_ == [[3]]  # a quarter of 12 steps


class _Stream(IterableDataset):
    def __iter__(self) -> Any:
        gen = torch.Generator().manual_seed(0)
        for _ in range(16):
            yield torch.randn(8, generator=gen), torch.randn(2, generator=gen)


def test_epochs_without_a_sized_loader_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"LRWarmup\(epochs=1.0\) needs the number of batches per epoch"):
        _trainer(tmp_path, [LRWarmup(epochs=1.0)], max_steps=4).fit(
            SchedModule(), train_dataloaders=DataLoader(_Stream(), batch_size=4)
        )


def test_factor_table_matches_the_pure_function() -> None:
    warmup = LRWarmup(steps=7, shape="cosine", start_factor=0.1)
    warmup.setup(None, None, "fit")  # type: ignore[arg-type]
    table = [warmup._factor(k, 7) for k in range(9)]
    assert table == list(np.asarray(warmup_factor(np.arange(9), 7, "cosine", 0.1)))


# ------------------------------------------------------------------------------------ found in review
class StepsItsSchedulerInTrainingStep(SchedModule):
    """Steps an ExponentialLR(0.5) inside training_step, before the optimizer step: the LR it sets must be used."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=BASE_LR)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
        return opt

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.sched.step()
        return super().training_step(batch, batch_idx)


def test_an_lr_set_inside_training_step_is_kept_and_warmed_up(tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("plain", []), ("warm", [LRWarmup(steps=6)])):
        probe = EffectiveLR()
        _trainer(tmp_path / name, [*extra, probe], max_epochs=1).fit(StepsItsSchedulerInTrainingStep(), _data())
        runs[name] = probe
    plain, warm = runs["plain"], runs["warm"]
    assert warm.scheduled[0] == pytest.approx(plain.scheduled[0], rel=1e-12) == [BASE_LR * 0.5**k for k in range(4)]
    # Step k runs with the LR training_step just set (halved again), times the warmup factor.
    assert [u[0] for u in warm.used[0]] == pytest.approx(
        [BASE_LR * 0.5 ** (k + 1) * _w(k, 6) for k in range(4)], rel=1e-9
    )


class ReturnsNone(SchedModule):
    """Lightning's "skip this batch": training_step returns None on batches 1 and 2."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return None if batch_idx in (1, 2) else loss


def test_a_batch_whose_training_step_returns_none_does_not_count(tmp_path: Path) -> None:
    probe, warmup = EffectiveLR(), LRWarmup(steps=6)
    _trainer(tmp_path, [warmup, probe], max_epochs=2).fit(ReturnsNone(), datamodule=_data())
    assert warmup.steps_applied_ == [4]  # 8 batches, 4 of them skipped
    assert [u[0] for u in probe.used[0]] == pytest.approx([BASE_LR * _w(k, 6) for k in range(4)], rel=1e-9)


def test_validate_after_fit_keeps_the_warmup_state(tmp_path: Path) -> None:
    warmup, model = LRWarmup(steps=100), SchedModule()
    trainer = _trainer(tmp_path, [warmup], max_epochs=1)
    trainer.fit(model, datamodule=_data())
    after_fit = warmup.state_dict()
    trainer.validate(model, datamodule=_data(), verbose=False)
    assert warmup.state_dict() == after_fit == {"steps_applied": [4], "warmup_steps": [[100]], "group_starts": [[0]]}


class UnfreezesMidWarmup(SchedModule):
    """Adds a second layer's parameters as a new param group at optimizer step 2 (an unfreeze)."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = torch.nn.Linear(8, 2)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.layer.parameters(), lr=BASE_LR)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.trainer.optimizers[0]
        if self.trainer.global_step == 2 and len(opt.param_groups) == 1:
            opt.add_param_group({"params": list(self.extra.parameters()), "lr": 0.05})
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x) + self.extra(x), y)


def test_a_param_group_added_during_warmup_gets_its_own_ramp(tmp_path: Path) -> None:
    probe, warmup = EffectiveLR(), LRWarmup(steps=4)
    _trainer(tmp_path, [warmup, probe], max_epochs=2).fit(UnfreezesMidWarmup(), datamodule=_data())
    used = probe.used[0]
    assert [u[0] for u in used] == pytest.approx([BASE_LR * _w(k, 4) for k in range(8)], rel=1e-9)
    # The new group starts its own 4-step ramp at step 2; the warmup lasts until it is done.
    assert [u[1] for u in used[2:]] == pytest.approx([0.05 * _w(k, 4) for k in range(6)], rel=1e-9)
    assert warmup.group_starts_ == [[0, 2]] and warmup.steps_applied_ == [6]


# ------------------------------------------------------------------------------ misconfigurations warn
class _Scheduled(RegressionModule):
    """SGD (or Adam) with the scheduler ``make(optimizer)`` builds, stepped every optimizer step."""

    def __init__(self, make: Any = None, adam: bool = False) -> None:
        super().__init__()
        self.make = make
        self.adam = adam

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=0.01) if self.adam else torch.optim.SGD(self.parameters(), lr=0.1)
        if self.make is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.make(opt), "interval": "step"}}


def _hf_style_linear_schedule(optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int) -> Any:
    """Built as ``transformers.get_linear_schedule_with_warmup`` builds its scheduler (transformers is not a
    dependency): a LambdaLR over a ``functools.partial`` with a ``num_warmup_steps`` keyword."""

    def lr_lambda(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    bound = functools.partial(lr_lambda, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, bound)


def _fit_warnings(tmp_path: Path, warmup: LRWarmup, module: pl.LightningModule) -> list[str]:
    # 32 samples in batches of 8, 3 epochs: 12 optimizer steps.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, [warmup], precision="32-true").fit(module, datamodule=_data())
    return [str(w.message) for w in caught if str(w.message).startswith("LRWarmup")]


@pytest.mark.parametrize(
    ("warmup", "adam", "match"),
    [
        (
            {"steps": 10_000},
            False,
            r"the warmup lasts 10000 optimizer steps, longer than this fit's 12 "
            r"\(trainer.estimated_stepping_batches\): the LR never reaches its peak, and the last step uses 0.12% "
            r"of it\. .*give a shorter one",
        ),
        (
            {"steps": "untuned"},
            True,
            r"the warmup lasts 2000 optimizer steps \(steps='untuned': 2 / \(1 - beta2\) .* 2000 for beta2 = 0.999\), "
            r"longer than this fit's 12 .*never reaches its peak",
        ),
        (
            {"steps": 12},
            False,
            r"the warmup lasts 12 optimizer steps, as long as this fit .*peak on the last step only",
        ),
        ({"epochs": 2}, False, r"the warmup lasts 8 optimizer steps, 67% of this fit's 12 \(.*\)\. A warmup usually"),
    ],
)
def test_a_warmup_longer_than_half_the_fit_warns(tmp_path: Path, warmup: dict, adam: bool, match: str) -> None:
    messages = _fit_warnings(tmp_path, LRWarmup(**warmup), _Scheduled(adam=adam))
    assert len(messages) == 1 and re.search(match, messages[0]), messages


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda o: schedules.warmup_cosine(o, 3, 12), r"\(epochkit.schedules.warmup_cosine with warmup_steps=3\)"),
        (lambda o: schedules.warmup_constant(o, 2, shape="cosine"), r"epochkit.schedules.warmup_constant with"),
        (lambda o: _hf_style_linear_schedule(o, 3, 12), r"\(.*lr_lambda with num_warmup_steps=3\)"),
        (
            lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.01, total_iters=3),
            r"LinearLR already warms up \(LinearLR from start_factor=0.01 over 3 steps\)",
        ),
        (
            lambda o: torch.optim.lr_scheduler.SequentialLR(
                o,
                [
                    torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=3),
                    torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=9),
                ],
                milestones=[3],
            ),
            r"SequentialLR already warms up \(LinearLR from start_factor=0.1 over 3 steps\)",
        ),
    ],
)
def test_warmup_on_top_of_a_scheduler_that_warms_up_warns(tmp_path: Path, make: Any, match: str) -> None:
    messages = _fit_warnings(tmp_path, LRWarmup(steps=2), _Scheduled(make))
    assert len(messages) == 1 and re.search(match + r".*warmup twice\)\. Keep one", messages[0]), messages


@pytest.mark.parametrize(
    ("warmup", "make"),
    [
        ({"steps": 6}, None),  # half the fit: allowed
        ({"epochs": 1}, lambda o: schedules.warmup_cosine(o, 0, 12, floor=0.1)),  # a schedule without warmup
        ({"steps": 2}, lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1)),  # a decay
        ({"steps": 2}, lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=12)),
        ({"fraction": 1.0}, None),  # relative to the run: deliberate
    ],
)
def test_sound_warmups_say_nothing(tmp_path: Path, warmup: dict, make: Any) -> None:
    assert _fit_warnings(tmp_path, LRWarmup(**warmup), _Scheduled(make)) == []


class _RankZeroInfo(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_epochs_reads_the_runs_length_without_lightning_loading_the_loader_early(tmp_path: Path) -> None:
    # Read at fit start, the length made Lightning load the train loader early and log "Loading `train_dataloader`
    # to estimate number of stepping batches." on every fit (every fold of a cross-validation).
    handler = _RankZeroInfo()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        for warmup in (LRWarmup(epochs=1), LRWarmup(fraction=0.25)):
            _trainer(tmp_path, [warmup]).fit(SchedModule(), datamodule=_data())
            assert warmup.warmup_steps_ == [[4]] or warmup.warmup_steps_ == [[3]]
    finally:
        logger.removeHandler(handler)
    assert not [m for m in handler.messages if "to estimate number of stepping batches" in m], handler.messages
