"""Wilson intervals, the paired Delta's interval, t intervals and the document bootstrap against
independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from memlab.eval.stats import (
    accuracy_record,
    document_bootstrap,
    mean_interval,
    paired_delta,
    pool,
    tango_paired_interval,
    wilson_interval,
)


def wilson_by_formula(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (7, 10), (10, 10), (1, 1), (503, 1000)])
def test_wilson_matches_the_formula(k, n):
    np.testing.assert_allclose(wilson_interval(k, n), wilson_by_formula(k, n), atol=1e-9)


def test_accuracy_records_and_pooling():
    r = accuracy_record([True, False, True, True])
    assert r["accuracy"] == 0.75 and r["correct"] == 3 and r["n"] == 4
    assert r["ci95"] == pytest.approx(list(wilson_by_formula(3, 4)))
    assert accuracy_record([])["accuracy"] is None and accuracy_record([])["ci95"] == [0.0, 1.0]
    pooled = pool([r, accuracy_record([False] * 4)])
    assert pooled["correct"] == 3 and pooled["n"] == 8 and pooled["accuracy"] == 3 / 8


def test_paired_delta():
    rng = np.random.default_rng(0)
    normal = rng.random(400) < 0.8
    ablated = normal & (rng.random(400) < 0.5)  # the ablation loses about half the right answers
    d = paired_delta(normal, ablated)
    assert d["n"] == 400 and d["delta"] == pytest.approx(normal.mean() - ablated.mean())
    lo, hi = d["ci95"]
    assert lo < d["delta"] < hi and lo > 0.3 and hi - lo < 0.15
    # the paired interval is narrower than one that ignores the pairing (independent resampling)
    idx = rng.integers(0, 400, (2000, 2, 400))
    unpaired = normal[idx[:, 0]].mean(1) - ablated[idx[:, 1]].mean(1)
    assert hi - lo < np.subtract(*np.percentile(unpaired, [97.5, 2.5]))


def test_paired_delta_degenerate_and_bad_input():
    # no pair differs: Tango's interval, +-z^2 / (n + z^2), whatever the accuracy (Newcombe's had been [0, 0] at 50%)
    for right in (25, 30, 0):
        same = paired_delta([1] * right + [0] * (50 - right), [1] * right + [0] * (50 - right))
        assert same["delta"] == 0.0 and same["ci95"] == pytest.approx([-3.8415 / 53.8415, 3.8415 / 53.8415], rel=1e-3)
    low, high = paired_delta([1] * 200, [0] * 200)["ci95"]  # every pair differs the same way
    assert high == 1.0 and 0.95 < low < 1.0
    assert paired_delta([1] * 20, [0] * 20)["ci95"][0] < low  # fewer pairs, wider interval
    assert paired_delta([], []) == {"delta": None, "ci95": [-1.0, 1.0], "n": 0}
    with pytest.raises(ValueError):
        paired_delta([1, 0], [1])


def test_tango_interval_agrees_with_a_paired_bootstrap_of_many_examples():
    rng = np.random.default_rng(3)
    normal = rng.random(500) < 0.7
    ablated = normal & (rng.random(500) < 0.6)
    diff = normal.astype(float) - ablated
    boot = stats.bootstrap((diff,), np.mean, n_resamples=2000, method="percentile", random_state=0).confidence_interval
    assert tango_paired_interval(normal, ablated) == pytest.approx([boot.low, boot.high], abs=0.01)


@pytest.mark.parametrize("n, only_normal, only_ablated", [(5, 0.3, 0.2), (8, 0.05, 0.1), (15, 0.05, 0.1)])
def test_the_delta_interval_covers_the_true_delta_of_few_examples(n, only_normal, only_ablated):
    """Its exact coverage, over every table of discordant pairs weighted by its probability: the
    percentile bootstrap of the pairs had covered 77%, 84% and 85% here."""
    coverage = 0.0
    for i in range(n + 1):
        for j in range(n + 1 - i):
            p = stats.multinomial.pmf([i, j, n - i - j], n, [only_normal, only_ablated, 1 - only_normal - only_ablated])
            normal, ablated = np.arange(n) < i, (np.arange(n) >= i) & (np.arange(n) < i + j)
            lo, hi = paired_delta(normal, ablated)["ci95"]
            coverage += p * (lo <= only_normal - only_ablated <= hi)
    assert coverage >= 0.93


def test_delta_intervals_cover_a_small_true_delta():
    """Memory that changes few answers: most draws have no discordant pair, where an interval of zero
    width had covered 0 of 140 (86% overall)."""
    rng = np.random.default_rng(0)
    n, true = 200, 0.01
    covered = 0
    for _ in range(300):
        cells = rng.choice(4, size=n, p=[0.5, true, 0.0, 0.5 - true])  # both right, only normal, only ablated, neither
        lo, hi = paired_delta(np.isin(cells, [0, 1]), cells == 0)["ci95"]
        covered += lo <= true <= hi
    assert covered / 300 >= 0.93


def test_mean_interval_is_a_t_interval():
    r = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, df=2) * s / sqrt(n)
    assert r["mean"] == 2.0 and r["n"] == 3 and r["ci95"] == pytest.approx([2 - half, 2 + half])
    assert mean_interval([5.0]) == {"mean": 5.0, "ci95": [None, None], "n": 1, "std": None}  # no spread from one


def test_mean_interval_keeps_non_finite_values():
    r = mean_interval([11.0, 12.0, float("nan")])  # a collapsed member: no mean, not the mean of the rest
    assert r == {"mean": None, "ci95": [None, None], "n": 3, "std": None}
    assert mean_interval([1.0, float("inf")])["mean"] is None and mean_interval([None])["n"] == 1


def test_document_bootstrap_resamples_whole_documents():
    """Six long documents of two very different losses: the token-weighted mean is uncertain by a
    good part of their difference (a per-token or per-window interval would be far narrower)."""
    sums, counts = np.tile([1000.0, 3000.0], 3), np.full(6, 1000)  # mean NLL 1 and 3, three of each
    low, high = document_bootstrap(sums, counts)
    assert (low + high) / 2 == pytest.approx(2.0) and high - low > 1.0  # normal theory: 2 x 1.96 / sqrt(6) = 1.6
    assert document_bootstrap(sums[:4], counts[:4]) == [None, None]  # four: too few distinct resamples
    many = np.tile([1.0, 3.0], 200)  # 400 short documents alike: a narrow interval around 2
    low, high = document_bootstrap(many * 10, np.full(400, 10))
    assert (low + high) / 2 == pytest.approx(2.0, abs=0.01) and high - low == pytest.approx(2 * 1.96 / 20, rel=0.1)


def test_document_bootstrap_is_weighted_by_tokens_and_needs_five_documents():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 100, size=50)
    sums = counts * rng.uniform(1, 2, size=50)
    low, high = document_bootstrap(sums, counts)
    assert low < sums.sum() / counts.sum() < high
    assert document_bootstrap(sums, counts) == [low, high]  # seeded
    assert document_bootstrap(np.array([5.0]), np.array([3])) == [None, None]
    assert document_bootstrap(np.array([5.0, 1, 1, 1, math.inf]), np.array([3, 3, 3, 3, 3])) == [None, None]


def restricted_score(only_a: int, only_b: int, n: int, d: float) -> float:
    """Tango's score statistic at the difference ``d``, its nuisance P(only_b) maximised numerically
    (the multinomial likelihood of the four cells under ``d``), not by the closed form."""
    from scipy import optimize

    rest = n - only_a - only_b

    def negative_log_likelihood(q: float) -> float:
        p_a, p_b = q + d, q  # P(only_a), P(only_b)
        if min(p_a, p_b) <= 0 or p_a + p_b >= 1:
            return math.inf
        return -(only_a * math.log(p_a) + only_b * math.log(p_b) + rest * math.log(1 - p_a - p_b))

    q = optimize.minimize_scalar(negative_log_likelihood, bounds=(max(0.0, -d) + 1e-12, (1 - d) / 2 - 1e-12),
                                 method="bounded", options={"xatol": 1e-12}).x
    return (only_a - only_b - n * d) / math.sqrt(n * (2 * q + d * (1 - d)))


@pytest.mark.parametrize("only_a, only_b, both, neither", [(30, 10, 40, 20), (0, 4, 10, 6), (12, 3, 60, 25)])
def test_tango_interval_ends_where_the_restricted_score_reaches_the_normal_quantile(only_a, only_b, both, neither):
    """The closed-form restricted estimate of P(only_b) agrees with the likelihood's own maximum: at
    each end of the interval the score statistic is -+1.96."""
    normal = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, dtype=bool)
    ablated = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, dtype=bool)
    n = normal.size
    low, high = tango_paired_interval(normal, ablated)
    assert low < (only_a - only_b) / n < high
    assert restricted_score(only_a, only_b, n, low) == pytest.approx(1.959964, abs=1e-4)
    assert restricted_score(only_a, only_b, n, high) == pytest.approx(-1.959964, abs=1e-4)


def test_the_delta_interval_is_a_95_percent_interval():
    """Its width is that of the normal approximation at 1.96 standard errors (a 90% one is 16% narrower)."""
    rng = np.random.default_rng(0)
    normal = rng.random(400) < 0.8
    ablated = normal & (rng.random(400) < 0.5)
    lo, hi = paired_delta(normal, ablated)["ci95"]
    diff = normal.astype(float) - ablated
    assert hi - lo == pytest.approx(2 * 1.959964 * diff.std() / math.sqrt(400), rel=0.06)


def test_the_document_bootstrap_resamples_a_ratio_of_sums_not_a_mean_of_ratios():
    """Ten documents of 1000 tokens at loss 1 and ten of one token at loss 10: the loss is 10100 / 10010
    = 1.009, and a resample's between 1.004 (14 long documents drawn) and 1.021 (6); a mean of
    per-document losses would centre near 5.5."""
    sums, counts = np.array([1000.0] * 10 + [10.0] * 10), np.array([1000] * 10 + [1] * 10)
    low, high = document_bootstrap(sums, counts)
    assert 1.0 < low < 10100 / 10010 < high < 1.03


def test_five_documents_are_enough_for_an_interval():
    """Five documents of losses 1..5: the percentile bootstrap's interval is exactly [1.8, 4.2] (the
    mean of five draws, by convolution), narrower than even the t interval [1.04, 4.96]; the
    studentized one is at least as wide as the t interval."""
    sums, counts = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.ones(5)
    half = stats.t.ppf(0.975, 4) * sums.std(ddof=1) / math.sqrt(5)
    low, high = document_bootstrap(sums, counts)
    assert (low + high) / 2 == pytest.approx(3.0, abs=0.1) and low < 3 - half + 0.05 and high > 3 + half - 0.05
    assert document_bootstrap(sums[:4], counts[:4]) == [None, None]
    assert document_bootstrap(np.full(5, 7.0), np.ones(5)) == [7.0, 7.0]  # nothing varies


def test_the_document_interval_covers_the_loss_of_few_documents():
    """Ten documents of lognormal lengths in windows of 256 tokens that share the document's difficulty,
    longer ones at a higher loss: the percentile bootstrap had covered 80-84% of the true loss."""
    rng = np.random.default_rng(7)

    def documents(n: int) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.maximum(16, np.round(rng.lognormal(6.0, 1.0, n)))
        loss = 3.0 + rng.normal(0, 0.5, n) + 0.3 * np.log(lengths / 400)  # (n,)
        windows = np.ceil(lengths / 256)
        noise = rng.normal(0, 0.3 * 256 * np.sqrt(windows)) + rng.normal(0, np.sqrt(lengths))  # (n,)
        return lengths * loss + noise, lengths

    population = documents(200_000)
    truth = population[0].sum() / population[1].sum()
    covered = 0
    for seed in range(300):
        low, high = document_bootstrap(*documents(10), n_resamples=1000, seed=seed)
        covered += low <= truth <= high
    assert covered / 300 >= 0.87


def test_seeds_that_agree_on_shared_examples_get_the_examples_t_interval():
    """With no spread between seeds, only the examples' noise is left: a t interval on n - 1 degrees of freedom."""
    from memlab.eval.stats import seeds_and_examples_interval

    correct = (np.random.default_rng(0).random(200) < 0.3).astype(float)
    half = stats.t.ppf(0.975, 199) * correct.std(ddof=1) / np.sqrt(200)
    expected = [correct.mean() - half, correct.mean() + half]
    assert seeds_and_examples_interval(np.stack([correct] * 3)) == pytest.approx(expected)
    # against another model on those examples: the per-example differences' interval (paired)
    other = (np.random.default_rng(1).random(200) < 0.5).astype(float)
    d = correct - other
    half = stats.t.ppf(0.975, 199) * d.std(ddof=1) / np.sqrt(200)
    assert seeds_and_examples_interval(np.stack([correct] * 2), np.stack([other] * 4)) == pytest.approx(
        [d.mean() - half, d.mean() + half])
