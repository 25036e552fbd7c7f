"""The criteria as pure functions, against values computed by hand from the definitions (Keras, Prechelt 1998)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from epochkit.stopping import criteria

finite32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@given(current=finite32, best=finite32, min_delta=st.floats(0, 10, width=32), mode=st.sampled_from(["min", "max"]))
def test_absolute_improvement_is_lightnings_float32_comparison(
    current: float, best: float, min_delta: float, mode: str
) -> None:
    # Lightning: min_delta is stored negated in "min" mode and compared as monitor_op(current - min_delta, best).
    signed = min_delta if mode == "max" else -min_delta
    op = torch.gt if mode == "max" else torch.lt
    c, b = torch.tensor(current), torch.tensor(best)
    expected = bool(op(c - signed, b))
    assert bool(criteria.is_improvement(c, b, min_delta, mode)) is expected


def test_relative_min_delta_handles_negative_zero_and_infinite_bests() -> None:
    # min mode: improvement iff current < best - 0.1 * |best|
    assert criteria.is_improvement(0.89, 1.0, 0.1, "min", "rel")
    assert not criteria.is_improvement(0.91, 1.0, 0.1, "min", "rel")
    assert criteria.is_improvement(-2.3, -2.0, 0.1, "min", "rel")  # needs < -2.2
    assert not criteria.is_improvement(-2.1, -2.0, 0.1, "min", "rel")
    # max mode with a negative best: needs > -2.0 + 0.2 = -1.8 (a naive best * (1 + delta) would demand < -2.2)
    assert criteria.is_improvement(-1.7, -2.0, 0.1, "max", "rel")
    assert not criteria.is_improvement(-1.9, -2.0, 0.1, "max", "rel")
    # a best of exactly 0: any strict improvement counts, equality does not
    assert criteria.is_improvement(-1e-9, 0.0, 0.5, "min", "rel")
    assert not criteria.is_improvement(0.0, 0.0, 0.5, "min", "rel")
    # the first value always improves on the initial infinite best (0 * inf would be nan)
    assert criteria.is_improvement(5.0, math.inf, 0.0, "min", "rel")
    assert criteria.is_improvement(torch.tensor(-5.0), torch.tensor(-math.inf), 0.3, "max", "rel")


def test_keras_baseline_wait_count() -> None:
    # Keras: wait restarts only on an improvement that also beats the baseline.
    wait = 0
    for improved, beat in [(True, False), (True, False), (False, False), (True, True), (False, False)]:
        wait = criteria.next_wait_count(wait, improved, beat)
    assert wait == 1
    assert criteria.next_wait_count(3, improved=True) == 0


def test_smoothing_by_hand() -> None:
    values = [1.0, 3.0, 2.0, 10.0]
    # EMA with span 3: a = 0.5 -> 1, 2, 2, 6
    ema = None
    out = []
    for v in values:
        ema = criteria.ema_update(ema, v, 3)
        out.append(ema)
    assert out == [1.0, 2.0, 2.0, 6.0]
    assert criteria.window_mean(values, 2) == 6.0
    assert criteria.window_median(values, 3) == 3.0
    assert criteria.smoothed("median", values, 4) == 2.5
    assert criteria.ema_update(None, 4.0, 1) == criteria.ema_update(2.0, 4.0, 1) == 4.0
    with pytest.raises(ValueError, match="window"):
        criteria.window_mean(values, 0)
    with pytest.raises(ValueError, match="smoothing"):
        criteria.smoothed("gauss", values, 2)


# A validation/training error curve; strips of k = 3 end at checks 3, 6, 9.
E_VA = [0.50, 0.40, 0.35, 0.36, 0.34, 0.37, 0.40, 0.42, 0.45]
E_TR = [0.60, 0.45, 0.40, 0.38, 0.37, 0.365, 0.362, 0.361, 0.3605]


def test_generalization_loss_by_hand() -> None:
    e_opt = [min(E_VA[: t + 1]) for t in range(len(E_VA))]
    gl = [criteria.generalization_loss(e, o) for e, o in zip(E_VA, e_opt, strict=True)]
    # t=4 (1-based): E_opt = 0.35, E = 0.36 -> 100 * (0.36/0.35 - 1) = 2.857...
    assert gl[3] == pytest.approx(100 * (0.36 / 0.35 - 1))
    assert gl[3] == pytest.approx(2.857142857)
    # t=9: E_opt = 0.34, E = 0.45 -> 32.35...
    assert gl[8] == pytest.approx(32.352941176)
    # GL_5 stops after the first check with GL > 5: t=6 (0.37 / 0.34 -> 8.82)
    assert next(t for t, g in enumerate(gl, 1) if g > 5) == 6
    with pytest.raises(ValueError, match="non-negative"):
        criteria.generalization_loss(-0.1, -0.2)


def test_training_progress_and_pq_by_hand() -> None:
    # Strip t=4..6: sum 1.115, min 0.365 -> 1000 * (1.115 / (3 * 0.365) - 1) = 18.2648...
    p6 = criteria.training_progress(E_TR[3:6])
    assert p6 == pytest.approx(1000 * (1.115 / 1.095 - 1))
    assert p6 == pytest.approx(18.264840183)
    gl6 = criteria.generalization_loss(0.37, 0.34)
    assert criteria.progress_quotient(gl6, p6) == pytest.approx(8.8235294 / 18.2648402, rel=1e-6)
    # Strip t=7..9: sum 1.0835, min 0.3605 -> 1000 * (1.0835 / 1.0815 - 1) = 1.8493
    p9 = criteria.training_progress(E_TR[6:9])
    assert p9 == pytest.approx(1.849283403)
    assert criteria.progress_quotient(criteria.generalization_loss(0.45, 0.34), p9) == pytest.approx(17.4942, rel=1e-4)


def test_up_counts_successive_strip_increases_by_hand() -> None:
    # Strip ends t=3, 6, 9: 0.35, 0.37, 0.45 -> UP count 0, 1, 2: UP_1 stops at t=6, UP_2 at t=9.
    count, previous, counts = 0, None, []
    for t in (3, 6, 9):
        count = criteria.successive_increases(count, E_VA[t - 1], previous)
        previous = E_VA[t - 1]
        counts.append(count)
    assert counts == [0, 1, 2]
    # A strip end that is not worse resets the count; in "max" mode lower is worse.
    assert criteria.successive_increases(2, 0.30, 0.40) == 0
    assert criteria.successive_increases(0, 0.8, 0.9, mode="max") == 1
