"""Confidence intervals over per-episode accuracies (Student t), without SciPy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EvalResult", "mean_confidence_interval", "student_t_quantile"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
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
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom (bisection on the CDF).

    >>> round(student_t_quantile(0.975, 599), 4)
    1.9640
    >>> round(student_t_quantile(0.975, 1), 3)
    12.706
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class EvalResult:
    """Mean accuracy over episodes with its 95% confidence interval.

    Attributes:
        mean: mean of the per-episode accuracies (a fraction in [0, 1]).
        ci95: half-width of the 95% interval, ``t_{0.975, n-1} * s / sqrt(n)`` with the sample
            standard deviation ``s`` (``ddof=1``).
        std: sample standard deviation of the per-episode accuracies.
        episodes: number of episodes ``n``.
        loss: mean query loss, if known.
    """

    mean: float
    ci95: float
    std: float
    episodes: int
    loss: float | None = None

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f} % ({self.episodes} episodes)"

    def as_dict(self) -> dict[str, float | int | None]:
        return {"accuracy": self.mean, "ci95": self.ci95, "std": self.std,
                "episodes": self.episodes, "loss": self.loss}


def mean_confidence_interval(values: Sequence[float], loss: float | None = None) -> EvalResult:
    """Mean and Student-t 95% confidence half-width of per-episode values.

    Note: many few-shot code bases report ``1.96 * np.std(acc) / sqrt(n)`` (population std,
    normal quantile); for 600 episodes the two differ by about 0.3% of the interval.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no episodes to summarise")
    mean = math.fsum(values) / n
    if n == 1:
        return EvalResult(mean, float("nan"), float("nan"), 1, loss)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return EvalResult(mean, student_t_quantile(0.975, n - 1) * std / math.sqrt(n), std, n, loss)
