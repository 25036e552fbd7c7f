"""The schedule factors against independent references written from the anchors' published formulas, their
properties (hypothesis), the LambdaLR factories, ``preview`` and ``total_steps``.

References (restated here from the published formulas, not imported):
- Hugging Face transformers ``optimization.py``: linear, cosine (``num_cycles`` half-waves), cosine with hard
  restarts, polynomial decay, inverse square root, warmup-stable-decay; all with warmup ``s / W``.
- timm ``scheduler/cosine_lr.py``: ``lr_min + 0.5 (lr_max - lr_min)(1 + cos(pi t / t_initial))`` after a prefix
  warmup, ``lr_min`` past ``t_initial`` with ``cycle_limit=1``.

Convention stated in ``epochkit.warmup.schedules``: epochkit(s) == reference(s + 1) for every step before the
horizon (no wasted first step at LR 0); past it epochkit holds the floor.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from epochkit import schedules
from tests.helpers import RegressionDataModule, RegressionModule


# ------------------------------------------------------------------------------------------- references
def hf_linear(s: int, w: int, t: int) -> float:
    if s < w:
        return s / max(1, w)
    return max(0.0, (t - s) / max(1, t - w))


def hf_cosine(s: int, w: int, t: int, num_cycles: float = 0.5) -> float:
    if s < w:
        return s / max(1, w)
    progress = (s - w) / max(1, t - w)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def hf_cosine_hard_restarts(s: int, w: int, t: int, num_cycles: int) -> float:
    if s < w:
        return s / max(1, w)
    progress = (s - w) / max(1, t - w)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def hf_polynomial(s: int, w: int, t: int, lr_init: float, lr_end: float, power: float) -> float:
    if s < w:
        return s / max(1, w)
    if s > t:
        return lr_end / lr_init
    decay = (lr_init - lr_end) * (1 - (s - w) / (t - w)) ** power + lr_end
    return decay / lr_init


def hf_inverse_sqrt(s: int, w: int, timescale: int) -> float:
    if s < w:
        return s / max(1, w)
    shift = timescale - w
    return 1.0 / math.sqrt((s + shift) / timescale)


def hf_wsd(s: int, w: int, stable: int, decay: int, min_ratio: float, decay_type: str) -> float:
    if s < w:
        return s / max(1, w)
    if s < w + stable:
        return 1.0
    if s < w + stable + decay:
        p = (s - w - stable) / max(1, decay)
        if decay_type == "linear":
            v = 1.0 - p
        elif decay_type == "cosine":
            v = 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            v = 1.0 - math.sqrt(p)
        return (1.0 - min_ratio) * v + min_ratio
    return min_ratio


def timm_cosine(t: int, warmup_t: int, t_initial: int, lr_max: float, lr_min: float) -> float:
    if t < warmup_t:
        return lr_max * t / warmup_t  # warmup_lr_init = 0
    t = t - warmup_t  # warmup_prefix=True
    if t >= t_initial:  # cycle_limit=1
        return lr_min
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t / t_initial))


W, T = 7, 40
STEPS = range(T)


def test_linear_matches_hf_one_step_later() -> None:
    ours = schedules.warmup_linear_factor(np.arange(T), W, T)
    assert ours == pytest.approx([hf_linear(s + 1, W, T) for s in STEPS], abs=1e-12)


def test_cosine_matches_hf_one_step_later_and_does_not_rise_past_the_horizon() -> None:
    ours = schedules.warmup_cosine_factor(np.arange(T), W, T)
    assert ours == pytest.approx([hf_cosine(s + 1, W, T) for s in STEPS], abs=1e-12)
    past = schedules.warmup_cosine_factor(np.arange(T, 2 * T), W, T)
    assert np.all(past == 0.0)
    # HF's cosine turns back up past its horizon; epochkit's must not.
    assert hf_cosine(T + 10, W, T) > 0.0


def test_cosine_cycles_match_hf_hard_restarts() -> None:
    ours = schedules.warmup_cosine_factor(np.arange(T - 1), W, T, cycles=3)
    # HF reaches its floor only at s == T, which it never uses, and jumps at cycle boundaries where epochkit
    # finishes the cycle on the floor first: compare away from the two cycle boundaries.
    boundaries = {W - 1 + round(k * (T - W) / 3) for k in (1, 2)}
    for s in range(T - 1):
        if s not in boundaries:
            assert ours[s] == pytest.approx(hf_cosine_hard_restarts(s + 1, W, T, 3), abs=1e-12), s
    assert all(ours[s] == pytest.approx(0.0, abs=1e-12) for s in boundaries)


def test_cosine_floor_matches_timm_one_step_later() -> None:
    ours = schedules.warmup_cosine_factor(np.arange(T + 5), W, T, floor=0.1)
    ref = [timm_cosine(s + 1, W, T - W, 1.0, 0.1) for s in range(T + 5)]
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("power", "floor"), [(1.0, 0.0), (2.0, 0.1), (0.5, 0.25)])
def test_polynomial_matches_hf_one_step_later(power: float, floor: float) -> None:
    ours = schedules.warmup_polynomial_factor(np.arange(T + 3), W, T, power=power, floor=floor)
    ref = [hf_polynomial(s + 1, W, T, 1.0, floor, power) for s in range(T + 3)]
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("timescale", [None, 3, 50])
def test_inverse_sqrt_matches_hf_one_step_later(timescale: int | None) -> None:
    ours = schedules.warmup_inverse_sqrt_factor(np.arange(200), W, timescale)
    ref = [hf_inverse_sqrt(s + 1, W, timescale or W) for s in range(200)]
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("decay_shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_matches_hf_one_step_later(decay_shape: str) -> None:
    decay = 10
    ours = schedules.warmup_stable_decay_factor(np.arange(T + 3), W, decay, T, 0.05, decay_shape)  # type: ignore[arg-type]
    ref = [hf_wsd(s + 1, W, T - W - decay, decay, 0.05, decay_shape) for s in range(T + 3)]
    assert ours == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------------------- properties
horizons = st.integers(min_value=1, max_value=300).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(min_value=0, max_value=t - 1))
)
floors = st.floats(min_value=0.0, max_value=1.0)
starts = st.floats(min_value=0.0, max_value=0.99)
shapes = st.sampled_from(["linear", "cosine"])


def _all_schedules(w: int, t: int, floor: float, shape: str, start: float) -> dict[str, np.ndarray]:
    s = np.arange(2 * t + 5)
    kw = {"shape": shape, "start_factor": start}
    out = {
        "constant": schedules.warmup_constant_factor(s, w, **kw),
        "linear": schedules.warmup_linear_factor(s, w, t, floor, **kw),
        "cosine": schedules.warmup_cosine_factor(s, w, t, 1, floor, **kw),
        "cosine3": schedules.warmup_cosine_factor(s, w, t, 3, floor, **kw),
        "poly": schedules.warmup_polynomial_factor(s, w, t, 2.0, floor, **kw),
        "inverse_sqrt": schedules.warmup_inverse_sqrt_factor(s, w, None, **kw),
        "wsd": schedules.warmup_stable_decay_factor(s, w, max(1, (t - w) // 2), t, floor, "cosine", **kw),
    }
    return {k: np.asarray(v) for k, v in out.items()}


@given(horizons, floors, shapes, starts)
def test_factors_are_finite_in_range_and_never_zero_on_the_first_step(
    wt: tuple[int, int], floor: float, shape: str, start: float
) -> None:
    t, w = wt
    for name, f in _all_schedules(w, t, floor, shape, start).items():
        assert np.all(np.isfinite(f)), name
        assert np.all((f >= 0.0) & (f <= 1.0 + 1e-12)), name
        if w > 0:
            assert f[0] > 0.0, name
            assert f[w - 1] == 1.0, name  # peak exactly at the end of warmup


@given(horizons, floors, shapes, starts)
def test_warmup_is_monotone_and_the_decay_holds_its_floor(
    wt: tuple[int, int], floor: float, shape: str, start: float
) -> None:
    t, w = wt
    for name, f in _all_schedules(w, t, floor, shape, start).items():
        assert np.all(np.diff(f[:w]) > 0), name
        if name in {"linear", "cosine", "poly", "wsd"}:
            assert np.all(np.diff(f[max(w - 1, 0) :]) <= 1e-12), name  # never rises after the peak
            assert np.allclose(f[t - 1 :], floor, atol=1e-12), name  # floor on the last step and after
        if name == "cosine3":
            assert np.allclose(f[t - 1 :], floor, atol=1e-12), name


@given(st.integers(min_value=1, max_value=500), st.integers(min_value=1, max_value=400), shapes)
def test_continuity_at_the_end_of_warmup(w: int, extra: int, shape: str) -> None:
    t = w + extra
    # The first step after the peak moves at most one step of the decay's steepest slope (per unit progress):
    # linear 1, cosine pi/2, 3 cosine cycles 3 pi/2, polynomial power 2: 2; WSD holds; 1/sqrt: 1/(2W).
    slopes = {
        "constant": 0.0,
        "linear": 1.0,
        "cosine": math.pi / 2,
        "cosine3": 3 * math.pi / 2,
        "poly": 2.0,
        "wsd": 0.0,
    }
    for name, f in _all_schedules(w, t, 0.0, shape, 0.0).items():
        bound = 1 / (2 * w) if name == "inverse_sqrt" else slopes[name] / extra
        decay = max(1, extra // 2)  # as in _all_schedules
        if name == "wsd" and decay >= extra:  # no stable phase: the cosine decay starts right at the peak
            bound = math.pi / 2 / decay
        assert 1.0 - f[w] <= bound + 1e-12, name


# -------------------------------------------------------------------------------------------- factories
def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    ("factory", "kwargs", "factor"),
    [
        (schedules.warmup_constant, {"warmup_steps": 5}, schedules.warmup_constant_factor),
        (schedules.warmup_linear, {"warmup_steps": 5, "total_steps": 20, "floor": 0.1}, schedules.warmup_linear_factor),
        (schedules.warmup_cosine, {"warmup_steps": 5, "total_steps": 20, "cycles": 2}, schedules.warmup_cosine_factor),
        (
            schedules.warmup_polynomial,
            {"warmup_steps": 5, "total_steps": 20, "power": 3.0},
            schedules.warmup_polynomial_factor,
        ),
        (schedules.warmup_inverse_sqrt, {"warmup_steps": 5, "timescale": 8}, schedules.warmup_inverse_sqrt_factor),
        (
            schedules.warmup_stable_decay,
            {"warmup_steps": 5, "decay_steps": 6, "total_steps": 20},
            schedules.warmup_stable_decay_factor,
        ),
    ],
)
def test_factories_apply_their_factor_to_every_param_group(factory, kwargs, factor) -> None:  # type: ignore[no-untyped-def]
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}])
    scheduler = factory(optimizer, **kwargs)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    expected = np.asarray(factor(np.arange(25), **kwargs))
    lrs_a, lrs_b = [], []
    for _ in range(25):
        lrs_a.append(optimizer.param_groups[0]["lr"])
        lrs_b.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs_a == pytest.approx(0.1 * expected, rel=1e-12, abs=1e-15)
    assert lrs_b == pytest.approx(0.02 * expected, rel=1e-12, abs=1e-15)
    # The scheduler resumes from its state_dict (the factor is a partial of a pure function).
    clone_opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}])
    clone = factory(clone_opt, **kwargs)
    clone.load_state_dict(scheduler.state_dict())
    assert clone.last_epoch == scheduler.last_epoch


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda o: schedules.warmup_linear(o, 10, 10),
            r"`warmup_steps` \(10\) must be smaller than `total_steps` \(10\)",
        ),
        (lambda o: schedules.warmup_linear(o, 11, 10), r"`warmup_steps` \(11\) must be smaller"),
        (lambda o: schedules.warmup_cosine(o, 0, 0), r"`total_steps` must be an int > 0, got 0"),
        (lambda o: schedules.warmup_cosine(o, 2, 10, floor=1.5), r"`floor` is a ratio of the peak LR .* got 1.5"),
        (lambda o: schedules.warmup_cosine(o, 2, 10, cycles=0), r"`cycles` must be an int >= 1, got 0"),
        (lambda o: schedules.warmup_constant(o, -1), r"`warmup_steps` must be an int >= 0, got -1"),
        (lambda o: schedules.warmup_constant(o, 3, start_factor=1.0), r"`start_factor` must lie in \[0, 1\), got 1.0"),
        (lambda o: schedules.warmup_constant(o, 3, shape="exp"), r"`shape` must be one of .* got 'exp'"),
        (lambda o: schedules.warmup_polynomial(o, 2, 10, power=0.0), r"`power` must be > 0, got 0.0"),
        (lambda o: schedules.warmup_inverse_sqrt(o, 2, timescale=0), r"`timescale` must be an int >= 1 or None"),
        (lambda o: schedules.warmup_stable_decay(o, 5, 6, 10), r"`warmup_steps` \+ `decay_steps` \(5 \+ 6\)"),
        (lambda o: schedules.warmup_stable_decay(o, 2, 0, 10), r"`decay_steps` must be an int >= 1, got 0"),
        (lambda o: schedules.warmup_stable_decay(o, 2, 2, 10, decay_shape="exp"), r"`decay_shape` must be one of"),
    ],
)
def test_degenerate_settings_fail_clearly(call, match: str) -> None:  # type: ignore[no-untyped-def]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=match):
        call(optimizer)


def test_negative_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="`step` must be >= 0"):
        schedules.warmup_factor(-1, 3)


def test_preview_returns_the_whole_run_and_saves_a_plot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lrs = schedules.preview(lambda o: schedules.warmup_cosine(o, 10, 100, floor=0.1), steps=120, base_lr=3e-4)
    expected = 3e-4 * np.asarray(schedules.warmup_cosine_factor(np.arange(120), 10, 100, floor=0.1))
    assert lrs == pytest.approx(expected, rel=1e-12)
    pytest.importorskip("matplotlib")
    path = tmp_path / "plot" / "lr.png"
    schedules.preview(lambda o: schedules.warmup_linear(o, 2, 10), steps=10, save_path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["lr.png"]
    with pytest.raises(ValueError, match="`steps` must be an int >= 1, got 0"):
        schedules.preview(lambda o: schedules.warmup_linear(o, 2, 10), steps=0)


class _ScheduledModule(RegressionModule):
    """Builds its schedule from the Trainer inside configure_optimizers, as the docs show."""

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        total = schedules.total_steps(self.trainer)
        self.total_ = total
        scheduler = schedules.warmup_cosine(optimizer, warmup_steps=3, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_total_steps_inside_configure_optimizers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _ScheduledModule()
    trainer = pl.Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=RegressionDataModule(num_samples=48, batch_size=8))
    # 6 batches an epoch, 2 accumulated per step: 3 steps an epoch, 9 in all; the last one used the floor.
    assert model.total_ == 9 == trainer.global_step
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_total_steps_fails_clearly_for_an_endless_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown .* set Trainer\(max_steps=\.\.\.\)"):
        trainer.fit(_ScheduledModule(), datamodule=RegressionDataModule())
