"""The schedule factors against independent references written from the anchors' published formulas, their
properties (hypothesis), the LambdaLR factories, ``preview`` and ``total_steps``.

References, restated here from the anchors' source (not imported; neither library is a dependency):
- Hugging Face transformers ``optimization.py``: constant, linear, cosine, cosine with a min LR rate, cosine with a
  min LR rate and a ``(s + 1) / W`` warmup, cosine with hard restarts, polynomial decay, inverse square root and
  warmup-stable-decay; all but one warm up with ``s / W``, so their first step is at LR 0.
- timm ``scheduler/cosine_lr.py`` and ``scheduler/poly_lr.py``: ``lr_min + (lr_max - lr_min) * decay(t_curr /
  t_i)`` per cycle after a prefix warmup from ``warmup_lr_init``, ``lr_min`` after ``cycle_limit`` cycles
  (``cycle_mul = cycle_decay = k_decay = 1``).

The claims (``epochkit.schedules``' docstring and the README): epochkit's schedule over ``T`` steps is HF's
over ``T + 1`` steps without HF's first step, ``epochkit(s; W, T) == hf(s + 1; W, T + 1)`` for every ``s < T``, and
timm's with ``t_initial = (T - W + 1) / cycles`` likewise ``timm(s + 1)``; no step before the horizon runs at LR 0;
from the horizon on, the floor.
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
from tests.helpers import RegressionDataModule, RegressionModule, quiet_trainer


# ------------------------------------------------------------------------------------------- HF references
def hf_constant(s: int, w: int) -> float:
    if s < w:
        return float(s) / float(max(1.0, w))
    return 1.0


def hf_linear(s: int, w: int, t: int) -> float:
    if s < w:
        return float(s) / float(max(1, w))
    return max(0.0, float(t - s) / float(max(1, t - w)))


def hf_cosine(s: int, w: int, t: int, num_cycles: float = 0.5, min_lr_rate: float = 0.0) -> float:
    # get_cosine_schedule_with_warmup (min_lr_rate 0) and get_cosine_with_min_lr_schedule_with_warmup
    if s < w:
        return float(s) / float(max(1, w))
    progress = float(s - w) / float(max(1, t - w))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def hf_cosine_warmup_with_min_lr(s: int, w: int, t: int, min_lr_rate: float, num_cycles: float = 0.5) -> float:
    # get_cosine_with_min_lr_schedule_with_warmup_lr_rate with warmup_lr_rate=None: HF's one schedule whose
    # warmup skips the step at LR 0, (s + 1) / W
    if s < w:
        return (s + 1.0) / max(1.0, w)
    progress = (s - w + 1.0) / max(1.0, t - w)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def hf_cosine_hard_restarts(s: int, w: int, t: int, num_cycles: int) -> float:
    if s < w:
        return float(s) / float(max(1, w))
    progress = float(s - w) / float(max(1, t - w))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def hf_polynomial(s: int, w: int, t: int, lr_end: float, power: float, lr_init: float = 1.0) -> float:
    if s < w:
        return float(s) / float(max(1, w))
    if s > t:
        return lr_end / lr_init
    pct_remaining = 1 - (s - w) / (t - w)
    return ((lr_init - lr_end) * pct_remaining**power + lr_end) / lr_init


def hf_inverse_sqrt(s: int, w: int, timescale: int) -> float:
    if s < w:
        return float(s) / float(max(1, w))
    shift = timescale - w
    return 1.0 / math.sqrt((s + shift) / timescale)


def hf_wsd(s: int, w: int, stable: int, decay: int, warmup_type: str, decay_type: str, min_lr_ratio: float) -> float:
    if s < w:
        progress = float(s) / float(max(1, w))
        factor = progress if warmup_type == "linear" else 0.5 * (1.0 - math.cos(math.pi * progress))  # or cosine
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if s < w + stable:
        return 1.0
    if s < w + stable + decay:
        progress = float(s - w - stable) / float(max(1, decay))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
        else:  # 1-sqrt
            factor = 1.0 - math.sqrt(progress)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


# ----------------------------------------------------------------------------------------- timm references
def _timm(t: int, warmup_t: int, warmup_lr_init: float, t_initial: float, lr_min: float, cycle_limit: int, decay):  # type: ignore[no-untyped-def]
    lr_max = 1.0
    if t < warmup_t:
        return warmup_lr_init + t * (lr_max - warmup_lr_init) / warmup_t
    t = t - warmup_t  # warmup_prefix=True
    i = t // t_initial  # cycle_mul == 1
    t_curr = t - t_initial * i
    if i < cycle_limit:
        return lr_min + decay(lr_max - lr_min, t_curr / t_initial)
    return lr_min


def timm_cosine(
    t: int, warmup_t: int, t_initial: float, lr_min: float, cycle_limit: int = 1, init: float = 0.0
) -> float:
    return _timm(
        t, warmup_t, init, t_initial, lr_min, cycle_limit, lambda span, x: 0.5 * span * (1 + math.cos(math.pi * x))
    )


def timm_poly(t: int, warmup_t: int, t_initial: float, lr_min: float, power: float, init: float = 0.0) -> float:
    return _timm(t, warmup_t, init, t_initial, lr_min, 1, lambda span, x: span * (1 - x) ** power)


# ------------------------------------------------------------------------------------ against the anchors
# (W, T): no warmup, a one-step warmup and decay, warmup longer than the decay, the usual shapes, a long run.
HORIZONS = [(0, 1), (0, 12), (1, 2), (3, 4), (9, 12), (7, 40), (5, 36), (100, 1000)]
EXTRA = 6  # steps past the horizon that are compared too, where the anchor holds its floor


def _ours(fn, w: int, t: int, n: int, **kwargs) -> list[float]:  # type: ignore[no-untyped-def]
    return np.asarray(fn(np.arange(n), w, t, **kwargs)).tolist()


@pytest.mark.parametrize(("w", "t"), HORIZONS)
def test_constant_and_inverse_sqrt_are_hf_one_step_later(w: int, t: int) -> None:
    s = np.arange(t + EXTRA)
    assert np.asarray(schedules.warmup_constant_factor(s, w)).tolist() == pytest.approx(
        [hf_constant(i + 1, w) for i in s], abs=1e-12
    )
    for timescale in (None, 3, 50):
        ours = schedules.warmup_inverse_sqrt_factor(s, w, timescale)
        tau = timescale or w or 10_000
        assert np.asarray(ours).tolist() == pytest.approx([hf_inverse_sqrt(i + 1, w, tau) for i in s], abs=1e-12)


@pytest.mark.parametrize(("w", "t"), HORIZONS)
def test_linear_is_hf_over_one_more_step_without_its_first(w: int, t: int) -> None:
    ours = _ours(schedules.warmup_linear_factor, w, t, t + EXTRA)
    assert ours == pytest.approx([hf_linear(s + 1, w, t + 1) for s in range(t + EXTRA)], abs=1e-12)
    for floor in (0.1, 0.5):  # HF's linear has no floor: its polynomial decay with power 1 and lr_end does
        ours = _ours(schedules.warmup_linear_factor, w, t, t + EXTRA, floor=floor)
        ref = [hf_polynomial(s + 1, w, t + 1, lr_end=floor, power=1.0) for s in range(t + EXTRA)]
        assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("w", "t"), HORIZONS)
def test_cosine_is_hf_over_one_more_step_and_holds_its_floor_where_hf_rises(w: int, t: int) -> None:
    ours = _ours(schedules.warmup_cosine_factor, w, t, t + EXTRA)
    assert ours[:t] == pytest.approx([hf_cosine(s + 1, w, t + 1) for s in range(t)], abs=1e-12)
    assert ours[t:] == [0.0] * EXTRA
    assert hf_cosine(t + 1 + (t + 1 - w) // 2, w, t + 1) > 0.0  # HF's cosine turns back up past its horizon
    for floor in (0.1, 0.5):
        ours = _ours(schedules.warmup_cosine_factor, w, t, t, floor=floor)
        assert ours == pytest.approx([hf_cosine(s + 1, w, t + 1, min_lr_rate=floor) for s in range(t)], abs=1e-12)
        # HF's newest cosine already starts at (s + 1) / W: with one more step it is epochkit's, unshifted.
        assert ours == pytest.approx([hf_cosine_warmup_with_min_lr(s, w, t + 1, floor) for s in range(t)], abs=1e-12)


@pytest.mark.parametrize(("w", "t"), HORIZONS)
@pytest.mark.parametrize("cycles", [2, 3, 5])
def test_cosine_cycles_are_hf_hard_restarts_one_step_later(w: int, t: int, cycles: int) -> None:
    ours = _ours(schedules.warmup_cosine_factor, w, t, t + EXTRA, cycles=cycles)
    ref = [hf_cosine_hard_restarts(s + 1, w, t + 1, cycles) for s in range(t + EXTRA)]
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("w", "t", "cycles"), [(0, 11, 3), (1, 4, 2), (3, 4, 1), (7, 40, 2), (5, 36, 4), (0, 29, 5)])
@pytest.mark.parametrize("floor", [0.0, 0.1, 0.6])
@pytest.mark.parametrize("start_factor", [0.0, 0.25])
def test_cosine_cycles_and_floors_are_timm_one_step_later(
    w: int, t: int, cycles: int, floor: float, start_factor: float
) -> None:
    assert (t - w + 1) % cycles == 0  # timm's t_initial is a whole number of steps
    ours = _ours(schedules.warmup_cosine_factor, w, t, t + EXTRA, cycles=cycles, floor=floor, start_factor=start_factor)
    t_initial = (t - w + 1) // cycles
    ref = [timm_cosine(s + 1, w, t_initial, floor, cycle_limit=cycles, init=start_factor) for s in range(t + EXTRA)]
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("w", "t"), HORIZONS)
@pytest.mark.parametrize(("power", "floor"), [(1.0, 0.0), (2.0, 0.1), (0.5, 0.25), (3.0, 0.0)])
def test_polynomial_is_hf_and_timm_one_step_later(w: int, t: int, power: float, floor: float) -> None:
    ours = _ours(schedules.warmup_polynomial_factor, w, t, t + EXTRA, power=power, floor=floor)
    assert ours == pytest.approx([hf_polynomial(s + 1, w, t + 1, floor, power) for s in range(t + EXTRA)], abs=1e-12)
    assert ours == pytest.approx([timm_poly(s + 1, w, t - w + 1, floor, power) for s in range(t + EXTRA)], abs=1e-12)
    # The linear schedule is the polynomial of power 1; timm starts its warmup from warmup_lr_init (start_factor).
    ours = _ours(schedules.warmup_linear_factor, w, t, t + EXTRA, floor=floor, start_factor=0.3)
    ref = [timm_poly(s + 1, w, t - w + 1, floor, 1.0, init=0.3) for s in range(t + EXTRA)]
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("w", "d", "t"), [(0, 1, 1), (1, 1, 2), (2, 2, 4), (3, 10, 40), (7, 10, 40), (0, 5, 30)])
@pytest.mark.parametrize("decay_shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("floor", [0.0, 0.05, 0.1])
def test_wsd_is_hf_one_step_later_with_hfs_warmup_start(
    w: int, d: int, t: int, decay_shape: str, shape: str, floor: float
) -> None:
    # HF's WSD (only) ramps its warmup up from min_lr_ratio: epochkit's start_factor; its decay counts one step more.
    ours = schedules.warmup_stable_decay_factor(
        np.arange(t + EXTRA), w, d, t, floor, decay_shape, shape, start_factor=floor
    )  # type: ignore[arg-type]
    ref = [hf_wsd(s + 1, w, t - w - d, d + 1, shape, decay_shape, floor) for s in range(t + EXTRA)]
    assert np.asarray(ours).tolist() == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------------------- properties
horizons = st.integers(min_value=1, max_value=300).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(min_value=0, max_value=t - 1))
)
floors = st.floats(min_value=0.0, max_value=1.0)
starts = st.floats(min_value=0.0, max_value=0.99)
shapes = st.sampled_from(["linear", "cosine"])
cycle_counts = st.integers(min_value=1, max_value=7)
DECAYING = {"linear", "cosine", "poly", "wsd", "wsd_linear", "wsd_1-sqrt"}


def _all_schedules(w: int, t: int, floor: float, shape: str, start: float, cycles: int = 3) -> dict[str, np.ndarray]:
    s = np.arange(2 * t + 5)
    kw = {"shape": shape, "start_factor": start}
    decay = max(1, (t - w) // 2)
    out = {
        "constant": schedules.warmup_constant_factor(s, w, **kw),
        "linear": schedules.warmup_linear_factor(s, w, t, floor, **kw),
        "cosine": schedules.warmup_cosine_factor(s, w, t, 1, floor, **kw),
        "cosine_cycles": schedules.warmup_cosine_factor(s, w, t, cycles, floor, **kw),
        "poly": schedules.warmup_polynomial_factor(s, w, t, 2.0, floor, **kw),
        "inverse_sqrt": schedules.warmup_inverse_sqrt_factor(s, w, None, **kw),
        "wsd": schedules.warmup_stable_decay_factor(s, w, decay, t, floor, "cosine", **kw),
        "wsd_linear": schedules.warmup_stable_decay_factor(s, w, decay, t, floor, "linear", **kw),
        "wsd_1-sqrt": schedules.warmup_stable_decay_factor(s, w, decay, t, floor, "1-sqrt", **kw),
    }
    return {k: np.asarray(v) for k, v in out.items()}


@given(horizons, floors, shapes, starts, cycle_counts)
def test_no_step_before_the_horizon_runs_at_lr_0_and_the_peak_ends_the_warmup(
    wt: tuple[int, int], floor: float, shape: str, start: float, cycles: int
) -> None:
    t, w = wt
    for name, f in _all_schedules(w, t, floor, shape, start, cycles).items():
        assert np.all(np.isfinite(f)), name
        assert np.all((f >= 0.0) & (f <= 1.0 + 1e-12)), name
        assert np.all(f[:t] > 0.0), (name, np.flatnonzero(f[:t] <= 0.0))  # every step of the run trains
        if w > 0:
            assert f[w - 1] == 1.0, name  # peak exactly at the end of warmup


@given(horizons, floors, shapes, starts, cycle_counts)
def test_warmup_is_monotone_and_the_floor_is_reached_at_the_horizon_and_held(
    wt: tuple[int, int], floor: float, shape: str, start: float, cycles: int
) -> None:
    t, w = wt
    for name, f in _all_schedules(w, t, floor, shape, start, cycles).items():
        assert np.all(np.diff(f[:w]) > 0), name
        if name in DECAYING:
            assert np.all(np.diff(f[max(w - 1, 0) :]) <= 1e-12), name  # never rises after the peak
        if name in DECAYING or name == "cosine_cycles":
            assert np.all(f[t:] == floor), name  # the floor from the horizon on, exactly
            if floor < 0.999:  # (closer to 1, floor + (1 - floor) * x rounds to the floor)
                assert f[t - 1] > floor, name  # the last step still trains above the floor


@given(st.integers(min_value=1, max_value=500), st.integers(min_value=1, max_value=400), shapes)
def test_continuity_at_the_end_of_warmup(w: int, extra: int, shape: str) -> None:
    t = w + extra
    # The first step after the peak moves at most one step of the decay's steepest slope (per unit progress):
    # linear 1, cosine pi/2, 3 cosine cycles 3 pi/2, polynomial power 2: 2; WSD holds; 1/sqrt: 1/(2W).
    slopes = {
        "constant": 0.0,
        "linear": 1.0,
        "cosine": math.pi / 2,
        "cosine_cycles": 3 * math.pi / 2,
        "poly": 2.0,
        "wsd": 0.0,
    }
    for name, f in _all_schedules(w, t, 0.0, shape, 0.0).items():
        if name not in slopes and name != "inverse_sqrt":
            continue  # the other WSD decays: 1-sqrt is steep at its start by design
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

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs_used_ = [*getattr(self, "lrs_used_", []), optimizer.param_groups[0]["lr"]]

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        total = schedules.total_steps(self.trainer)
        self.total_ = total
        scheduler = schedules.warmup_cosine(optimizer, warmup_steps=3, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_total_steps_inside_configure_optimizers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _ScheduledModule()
    trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=RegressionDataModule(num_samples=48, batch_size=8))
    # 6 batches an epoch, 2 accumulated per step: 3 steps an epoch, 9 in all. The last one still trained (the
    # schedule reaches its floor at the horizon, step 9), and the scheduler now holds the floor.
    assert model.total_ == 9 == trainer.global_step
    assert (
        model.lrs_used_[-1] == pytest.approx(0.1 * schedules.warmup_cosine_factor(8, 3, 9)) and model.lrs_used_[-1] > 0
    )
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_total_steps_fails_clearly_for_an_endless_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown .* set Trainer\(max_steps=\.\.\.\)"):
        trainer.fit(_ScheduledModule(), datamodule=RegressionDataModule())
