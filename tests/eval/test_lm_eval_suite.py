"""The lm-eval suite's records of lm-eval's metrics: intervals and counts (no lm-eval run)."""

from __future__ import annotations

import pytest

from memlab.eval.lm_eval_suite import _task_record
from memlab.eval.stats import wilson_interval


def test_accuracies_get_wilson_intervals_and_other_metrics_normal_ones():
    metrics = {"alias": "t", "acc,none": 1.0, "acc_stderr,none": 0.0, "acc_norm,none": 0.05,
               "acc_norm_stderr,none": 0.05, "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.35,
               "perplexity,none": 5.0, "perplexity_stderr,none": 0.5}
    r = _task_record(metrics, {"effective": 20})["metrics"]
    assert r["acc"]["ci95"] == pytest.approx(list(wilson_interval(20, 20)))  # not the zero-width [1, 1]
    assert r["acc_norm"]["ci95"] == pytest.approx(list(wilson_interval(1, 20)))  # inside [0, 1]
    assert r["exact_match,strict-match"]["ci95"] == pytest.approx(list(wilson_interval(10, 20)))
    assert r["perplexity"]["ci95"] == pytest.approx([5 - 1.96 * 0.5, 5 + 1.96 * 0.5])
    assert r["acc"]["n"] == 20 and r["acc"]["stderr"] == 0.0


def test_every_filter_of_a_metric_is_kept():
    """gsm8k reports exact_match under two filters; keyed by the name alone, one had overwritten the other."""
    metrics = {"exact_match,strict-match": 0.12, "exact_match_stderr,strict-match": 0.01,
               "exact_match,flexible-extract": 0.31, "exact_match_stderr,flexible-extract": 0.02, "acc,none": 0.5,
               "sample_len": 100}  # (lm-eval's document count: not a metric)
    record = _task_record(metrics, {"effective": 100})["metrics"]
    assert set(record) == {"exact_match,strict-match", "exact_match,flexible-extract", "acc"}
    assert record["exact_match,strict-match"]["value"] == 0.12 and record["exact_match,strict-match"]["stderr"] == 0.01
    assert record["exact_match,flexible-extract"]["value"] == 0.31
