"""Confidence intervals for the numbers the evaluation reports.

* an accuracy carries its sample count and a 95% Wilson score interval;
* a paired difference of accuracies (the memory-ablation Delta) carries a paired
  bootstrap interval: examples are resampled and both conditions use the same draw.  When every
  pair differs the same way the bootstrap has nothing to resample (a zero-width interval would
  overstate certainty), so Newcombe's hybrid score interval for paired proportions is used;
* a mean over seeds or windows carries a Student-t interval (none from a single value); a
  non-finite or missing value leaves the mean undefined rather than being dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``correct / n``; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_record(outcomes: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """``{"accuracy", "correct", "n", "ci95"}`` of per-example 0/1 outcomes (accuracy is None if n == 0)."""
    outcomes = np.asarray(outcomes, dtype=bool)
    return _record(int(outcomes.sum()), int(outcomes.size))


def pool(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool accuracy records (sums of correct and n) into one record with its Wilson interval."""
    return _record(sum(r["correct"] for r in records), sum(r["n"] for r in records))


def _record(correct: int, n: int) -> dict[str, Any]:
    accuracy = correct / n if n else None
    return {"accuracy": accuracy, "correct": correct, "n": n, "ci95": list(wilson_interval(correct, n))}


def paired_bootstrap(
    normal: Sequence[bool] | np.ndarray,
    ablated: Sequence[bool] | np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Delta = accuracy(normal) - accuracy(ablated) on the same examples, with a paired bootstrap interval.

    Returns ``{"delta", "ci95", "n"}``; ``delta`` is a fraction (0.25 = +25 points).
    """
    a, b = np.asarray(normal, dtype=float), np.asarray(ablated, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes must be two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    n = int(a.size)
    if n == 0:
        return {"delta": None, "ci95": [-1.0, 1.0], "n": 0}
    diff = a - b  # (n,) in {-1, 0, 1}
    delta = float(diff.mean())
    if np.all(diff == diff[0]):  # every resample gives the same mean
        return {"delta": delta, "ci95": list(newcombe_paired_interval(a, b, confidence)), "n": n}
    result = stats.bootstrap(
        (diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", random_state=np.random.default_rng(seed),  # scipy>=1.10 spelling
    )
    ci = result.confidence_interval
    return {"delta": delta, "ci95": [float(ci.low), float(ci.high)], "n": n}


def newcombe_paired_interval(
    normal: np.ndarray, ablated: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for p(normal) - p(ablated) on paired 0/1 outcomes.

    It combines the two Wilson intervals with the correlation phi of the paired 2x2 table, so it
    is never of zero width and stays inside [-1, 1].
    """
    a, b = np.asarray(normal, dtype=bool), np.asarray(ablated, dtype=bool)
    n = a.size
    both, only_a, only_b, neither = (int(np.sum(x)) for x in (a & b, a & ~b, ~a & b, ~a & ~b))
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson_interval(both + only_a, n, confidence), wilson_interval(both + only_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    delta = p1 - p2
    return max(-1.0, delta - math.sqrt(max(below, 0.0))), min(1.0, delta + math.sqrt(max(above, 0.0)))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``{"mean", "ci95", "n", "std"}``: the mean of ``values`` with a Student-t interval.

    ``n`` counts every value; a None or non-finite one makes mean, interval and std None, and
    a single value has no interval.
    """
    x = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    n = int(x.size)
    if n == 0 or not np.isfinite(x).all():
        return {"mean": None, "ci95": [None, None], "n": n, "std": None}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "ci95": [None, None], "n": 1, "std": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n, "std": std}
