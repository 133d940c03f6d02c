"""Confidence intervals for the numbers the evaluation reports.

* an accuracy carries its sample count and a 95% Wilson score interval;
* a paired difference of accuracies (the memory-ablation Delta) carries Tango's score interval
  for paired proportions: it rests on the discordant pairs, as the difference does, and keeps a
  width where no pair differs.  (A percentile bootstrap of the pairs, used before, covered 77-85%
  of true differences for a nominal 95% at 5 to 15 examples, exactly enumerated; Tango's 93% or more);
* two models' accuracies on the same examples (``memlab compare``) differ by Tango's paired interval,
  from the per-example outcomes kept as a string of 0s and 1s (:func:`outcomes_string`);
* a mean over seeds carries a Student-t interval (none from a single value); a non-finite or
  missing value leaves the mean undefined rather than being dropped;
* a token-weighted mean over documents (the perplexity's loss) carries a studentized bootstrap
  interval over whole documents: the windows of one document are correlated, so documents are
  what is resampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats

from memlab.data.shards import MIN_DOCUMENTS

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


def outcomes_string(outcomes: Sequence[bool] | np.ndarray) -> str:
    """Per-example 0/1 outcomes as a string of ``0`` and ``1``, one character per example."""
    return "".join("1" if o else "0" for o in np.asarray(outcomes, dtype=bool))


def parse_outcomes(text: str) -> np.ndarray:
    """(n,) bool of an :func:`outcomes_string`; a ValueError for any other character."""
    if set(text) - {"0", "1"}:
        raise ValueError("outcomes hold characters other than 0 and 1")
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def pool(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool accuracy records (sums of correct and n) into one record with its Wilson interval."""
    return _record(sum(r["correct"] for r in records), sum(r["n"] for r in records))


def _record(correct: int, n: int) -> dict[str, Any]:
    accuracy = correct / n if n else None
    return {"accuracy": accuracy, "correct": correct, "n": n, "ci95": list(wilson_interval(correct, n))}


def paired_delta(
    normal: Sequence[bool] | np.ndarray, ablated: Sequence[bool] | np.ndarray, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Delta = accuracy(normal) - accuracy(ablated) on the same examples, with Tango's paired interval.

    Returns ``{"delta", "ci95", "n"}``; ``delta`` is a fraction (0.25 = +25 points).
    """
    a, b = np.asarray(normal, dtype=bool), np.asarray(ablated, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes must be two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    n = int(a.size)
    if n == 0:
        return {"delta": None, "ci95": [-1.0, 1.0], "n": 0}
    delta = float(a.mean() - b.mean())
    return {"delta": delta, "ci95": list(tango_paired_interval(a, b, confidence)), "n": n}


def tango_paired_interval(
    normal: np.ndarray, ablated: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Tango's (1998) score interval for p(normal) - p(ablated) on paired 0/1 outcomes: the
    differences d whose score statistic, with the discordant-cell probability re-estimated under
    d, stays within the normal quantile.  Never of zero width (about +-3.84 / (n + 3.84) when no
    pair differs), inside [-1, 1]."""
    a, b = np.asarray(normal, dtype=bool), np.asarray(ablated, dtype=bool)
    n = a.size
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))  # the discordant pairs
    z = stats.norm.ppf(0.5 + confidence / 2)

    def score(d: float) -> float:
        w = -only_a - only_b + (2 * n - only_a + only_b) * d
        q = (math.sqrt(max(w * w + 8 * n * only_b * d * (1 - d), 0.0)) - w) / (4 * n)  # P(only_b) given d
        excess, variance = only_a - only_b - n * d, n * (2 * q + d * (1 - d))
        if variance > 0:
            return excess / math.sqrt(variance)
        return 0.0 if excess == 0 else math.copysign(math.inf, excess)

    delta = (only_a - only_b) / n
    low = -1.0 if score(-1.0) <= z else optimize.brentq(lambda d: score(d) - z, -1.0, delta)
    high = 1.0 if score(1.0) >= -z else optimize.brentq(lambda d: score(d) + z, delta, 1.0)
    return float(low), float(high)


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


def seeds_and_examples_interval(
    a: np.ndarray, b: np.ndarray | None = None, confidence: float = CONFIDENCE
) -> list[float] | None:
    """Interval of mean(a) - mean(b) (of mean(a) when ``b`` is None) for the outcomes (S, n) of
    S >= 2 training seeds on the same n examples (b's, of another model, on those examples too).

    A t interval over the seeds alone misses the examples' sampling noise, which every seed
    shares (seeds that nearly agree had given an interval far narrower than one run's).  The
    variance adds each model's seed spread (the variance of its seeds' accuracies / S) and the
    examples' (the variance over examples of the seeds' mean outcome, a's minus b's / n: paired
    by example), with Welch-Satterthwaite degrees of freedom.  It counts the seed-by-example
    interaction twice; in simulations of three seeds it covered 96-99% where the examples' noise
    dominates and 91-94% where the seeds' does; of two seeds, 97% and 86-88% (the seeds' variance
    rests on one degree of freedom).  The difference of two models covered 93-99% with 2, 3 or 5
    seeds.  None where nothing varies (or n < 2): an interval of zero width would claim certainty.
    """
    if a.shape[1] < 2:
        return None
    per_example = a.mean(0)  # (n,)
    parts = [(a.mean(1).var(ddof=1) / len(a), len(a) - 1)]  # (variance, degrees of freedom)
    if b is not None:
        per_example = per_example - b.mean(0)
        parts.append((b.mean(1).var(ddof=1) / len(b), len(b) - 1))
    parts.append((per_example.var(ddof=1) / per_example.size, per_example.size - 1))
    estimate, variance = float(per_example.mean()), sum(v for v, _ in parts)
    if variance == 0:
        return None
    df = variance**2 / sum(v * v / d for v, d in parts if v > 0)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(variance)
    return [estimate - half, estimate + half]


def document_bootstrap(
    sums: np.ndarray, counts: np.ndarray, n_resamples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE
) -> list[float | None]:
    """Studentized bootstrap interval of the ratio ``R = sums.sum() / counts.sum()``, resampling whole documents.

    ``sums``, ``counts``: (D,) per document (e.g. summed NLL and tokens).  Documents are drawn with
    replacement, D per resample; each resample's ratio is studentized by its own standard error
    (:func:`_ratio_standard_error`), and the interval is ``R - t_hi se, R - t_lo se`` from the
    quantiles of those t values.  ``[None, None]`` for fewer than ``MIN_DOCUMENTS`` documents or a
    non-finite sum.  In simulations (lognormal document lengths, windows of 256 tokens sharing their
    document's difficulty; 600 draws each) it covered 92%, 91%, 91%, 94% and 95% of the true loss at
    5, 10, 20, 50 and 200 documents, and 89%, 91%, 90%, 92% and 92% where longer documents have a
    higher loss; the percentile bootstrap used before, 82-95% and 73-93%.
    """
    sums, counts = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    D = sums.size
    if D < MIN_DOCUMENTS or not np.isfinite(sums).all():
        return [None, None]
    ratio, se = float(sums.sum() / counts.sum()), float(_ratio_standard_error(sums[None], counts[None])[0])
    if se == 0:  # every document at the same loss: nothing varies
        return [ratio, ratio]
    rng = np.random.default_rng(seed)
    t_values = []
    chunk = max(1, (1 << 22) // D)  # resamples per draw: (chunk, D) indices stay a few MB
    for start in range(0, n_resamples, chunk):
        picks = rng.integers(0, D, size=(min(chunk, n_resamples - start), D))  # (r, D)
        s, c = sums[picks], counts[picks]
        spread = _ratio_standard_error(s, c)  # (r,)
        kept = spread > 0  # (a resample of one document over and over has no spread to studentize by)
        t_values.append((s.sum(1)[kept] / c.sum(1)[kept] - ratio) / spread[kept])
    tail = 100 * (1 - confidence) / 2
    t_low, t_high = np.percentile(np.concatenate(t_values), [tail, 100 - tail])
    return [ratio - float(t_high) * se, ratio - float(t_low) * se]


def _ratio_standard_error(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(r,) standard errors of the ratios of sums of the rows of (r, D) ``sums`` and ``counts``, by
    linearisation: sqrt(D / (D - 1) * sum_d (s_d - R c_d)^2) / sum_d c_d, R the row's ratio."""
    D = sums.shape[1]
    total = counts.sum(1)  # (r,)
    residuals = sums - (sums.sum(1) / total)[:, None] * counts  # (r, D)
    return np.sqrt(D / (D - 1) * (residuals**2).sum(1)) / total
