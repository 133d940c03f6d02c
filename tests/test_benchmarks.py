"""The benchmark scripts run end to end at toy sizes and report what their docstrings promise.

Timings are not asserted (they belong to the scripts' JSON); only that every measurement is
there, positive, and that the ratios are the ratios of the reported rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_act  # noqa: E402
import bench_cdm  # noqa: E402
import bench_decode  # noqa: E402
import bench_gpu  # noqa: E402
import bench_kernels  # noqa: E402
import bench_ssm  # noqa: E402
import bench_train  # noqa: E402
import bench_window  # noqa: E402


def test_gated_delta_benchmark_reports_kernel_and_model_ratios():
    args = bench_kernels.Args(seq_len=40, repeats=2, size="tiny", train_seq_len=32, decode_context=24,
                              decode_tokens=2, decode_batch=[1, 2])
    result = bench_kernels.main(args)
    kernel, models = result["kernel"], result["models"]
    assert kernel["speedup_vs_loop"] > 0 and kernel["chunk_tokens_per_s"] > 0
    for batch in (1, 2):
        ratio = models["gdn"][f"decode_tokens_per_s_batch{batch}"] / models["baseline"][f"decode_tokens_per_s_batch{batch}"]
        assert models[f"decode_ratio_gdn_over_baseline_batch{batch}"] == pytest.approx(ratio)
    train_ratio = models["gdn"]["train_tokens_per_s"] / models["baseline"]["train_tokens_per_s"]
    assert models["train_ratio_gdn_over_baseline"] == pytest.approx(train_ratio)


def test_decode_by_context_visits_every_context_and_reports_state_bytes():
    args = bench_decode.Args(size="tiny", contexts=[8, 16], new_tokens=2, rounds=2)
    result = bench_decode.main(args)
    assert [r["context"] for r in result["results"]] == [8, 16]
    assert all(r["decode_tokens_per_s"] > 0 for r in result["results"])
    kv = [r["state_bytes"] for r in result["results"]]
    assert kv[1] > kv[0]  # the baseline's KV cache grows with the context
    assert 0 < result["slowest_over_fastest"] <= 1


def test_ssm_and_cdm_benchmarks_run_all_parts():
    ssm = bench_ssm.main(bench_ssm.Args(size="tiny", seq_len=32, train_steps=1, contexts=[8, 16], decode_tokens=2,
                                        decode_rounds=1))
    assert ssm["ssd"] and ssm["train"]["ssm_over_baseline"] > 0
    assert ssm["decode"]["ssm"]["results"][0]["state_bytes"] == ssm["decode"]["ssm"]["results"][1]["state_bytes"]
    cdm = bench_cdm.main(bench_cdm.Args(seq_len=16, batch=1, slots=4, d_model=32, heads=2, vocab_size=64,
                                        train_steps=1, scan_rounds=1, decode_size="d32l1", contexts=[8, 16], new_tokens=2,
                                        decode_rounds=1))
    assert cdm["scan"]["max_abs_diff_vs_loop"] < 1e-4
    assert cdm["train"]["cdm_v3_over_baseline"] > 0 and cdm["decode"]["cdm"]["slowest_over_fastest"] > 0


def test_training_benchmark_reports_mfu_against_the_measured_peak():
    result = bench_train.main(bench_train.Args(size="tiny", seq_len=16, batch=2, steps=1, bf16=False))
    assert 0 < result["fp32_mfu"] < 1.5


def test_gpu_benchmark_runs_on_cpu_and_writes_both_tables(tmp_path):
    markdown = tmp_path / "results.md"
    args = bench_gpu.Args(device="cpu", variants=["gdn", "ssm"], sizes=["tiny"], seq_len=32, batch=2, steps=1,
                          kernel_batch=2, kernel_heads=2, decode_context=16, decode_tokens=2, markdown=str(markdown))
    result = bench_gpu.main(args)
    kernels = {(r["kernel"], r["dtype"]) for r in result["kernels"]}
    assert kernels == {(k, d) for k in ("gated_delta_rule", "ssd") for d in ("float32", "bfloat16")}
    assert all(r["torch_tokens_per_s"] > 0 and "fused_tokens_per_s" not in r for r in result["kernels"])  # CPU
    assert [(r["variant"], r["size"]) for r in result["rows"]] == [("gdn", "tiny"), ("ssm", "tiny")]
    assert all(r["bf16_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in result["rows"])
    text = markdown.read_text()
    assert "| ssd | bfloat16 |" in text and "not run" in text
    assert "| gdn | tiny | d128l4 |" in text and "| ssm | tiny | d128l8 |" in text  # the shape built, not the label
    assert "our scans against the fused kernels" in text and "the variants" in text


def test_act_benchmark_runs_the_planned_steps_and_fits_both_axes():
    result = bench_act.main(bench_act.Args(size="tiny", seq_len=16, batch=2, rounds=1, early_shares=[0.5],
                                           decode_context=8, decode_tokens=2, decode_rounds=1))  # fmt: skip
    train = result["train"]
    rows = {r["plan"]: r for r in train["results"]}
    assert [rows[f"all {k}"]["mean_steps"] for k in range(2, 9)] == list(range(2, 9))
    mixed = rows["50% at 2, the rest 8"]
    assert mixed["max_steps"] == 8 and 2 < mixed["mean_steps"] < 8  # the same max, a smaller mean
    assert set(train["fit_step_s"]) == {"mean_steps", "max_steps"} and train["follows"] in ("mean", "max")
    decode = {(r["steps"], r["form"]) for r in result["decode"]["results"] if r["tokens_per_s"] > 0}
    assert decode == {(k, form) for k in (2, 8) for form in ("rows", "reference")}


def test_window_benchmark_times_each_form_at_each_length():
    result = bench_window.main(bench_window.Args(seq_lens=[16, 40], window=4, heads=2, kv_heads=1, head_dim=8,
                                                 rounds=1))
    assert [r["seq_len"] for r in result["rows"]] == [16, 40]
    for row in result["rows"]:
        assert all(row[f"{name}_ms"] > 0 for name in ("blocked", "dense_mask", "full_causal"))
        dense, blocked, half = row["dense_mask_ms"], row["blocked_ms"], 0.0005  # each rounded to 3 decimals
        ratio = row["blocked_speedup_vs_dense"]  # rounded to 2 (times of 0.1 ms had missed a 5% tolerance)
        assert (dense - half) / (blocked + half) - 0.005 <= ratio <= (dense + half) / (blocked - half) + 0.005
