"""Aggregates over folds: mean, sample standard deviation and a Student-t confidence interval, without scipy."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

__all__ = ["student_t_cdf", "student_t_quantile", "summarize"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom: ``1 - I_{df/(df+t^2)}(df/2, 1/2) / 2`` for t>0.

    Example:
        >>> round(student_t_cdf(0.0, 3), 12), round(student_t_cdf(1.0, 1), 12)  # Cauchy: 1/2 + atan(1)/pi
        (0.5, 0.75)
    """
    if df <= 0:
        raise ValueError(f"`df` must be > 0, got {df!r}.")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` degrees of freedom, by bisection on :func:`student_t_cdf`.

    Accurate to about 1e-10; ``df = inf`` gives the normal quantile.

    Example:
        >>> round(student_t_quantile(0.975, 4), 4), round(student_t_quantile(0.975, 9), 4)
        (2.7764, 2.2622)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` must lie in (0, 1), got {p!r}.")
    if math.isinf(df):
        return math.sqrt(2.0) * _erfinv(2.0 * p - 1.0)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    return _upper_quantile(p, df)


@functools.lru_cache(maxsize=256)
def _upper_quantile(p: float, df: float) -> float:
    """:func:`student_t_quantile` for ``p > 0.5``; cached: every summary of a run asks for the same few (about 40
    evaluations of the incomplete beta function each)."""
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _erfinv(y: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.erf(mid) < y:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation (``ddof=1``), and the Student-t confidence interval of the mean.

    ``ci = mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``; NaN values are left out, and with fewer than two
    values ``std`` and the interval are NaN.

    Example:
        >>> s = summarize([0.90, 0.92, 0.94])
        >>> round(s["mean"], 4), round(s["std"], 4), round(s["ci_low"], 4), round(s["ci_high"], 4), s["n"]
        (0.92, 0.02, 0.8703, 0.9697, 3)
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "n": 0}
    mean = math.fsum(xs) / n
    if n < 2:
        return {"mean": mean, "std": nan, "ci_low": nan, "ci_high": nan, "n": n}
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = student_t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}
