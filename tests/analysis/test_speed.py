"""``memlab bench``: what it times, the ratios it reports, its files and its errors (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

import memlab
from memlab.analysis.speed import MemoryJob, decoder, markdown_report, peak_memory, run_bench
from memlab.analysis.speed_options import BenchConfig
from memlab.analysis.timing import in_fresh_process, interleaved_seconds
from memlab.cli import main


def test_every_timed_decode_run_starts_at_the_stated_context():
    """Each run had continued where the last left off: '4096' had been timed at 4160 to 4480 tokens."""
    model = memlab.build_model("baseline", "tiny", d_model=32, n_layers=1, n_heads=2, d_ff=64).eval()
    d = decoder(model, 8, 3)
    seen, forward = [], model.forward
    model.forward = lambda ids, state=None, labels=None: seen.append(state.position) or forward(ids, state, labels)
    for _ in range(2):
        d.restore()
        d.run()
    assert seen == [8, 9, 10] * 2


def test_rounds_alternate_their_order_and_set_up_every_run():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    setups = {name: (lambda name=name: calls.append(f"setup {name}")) for name in "ab"}
    seconds = interleaved_seconds(fns, rounds=3, warmup=1, setups=setups)
    runs = [c for c in calls if not c.startswith("setup")]
    assert runs == ["a", "b", "b", "a", "a", "b", "b", "a"]  # a warm-up round, then 3 timed ones
    assert all(calls[i] == f"setup {calls[i + 1]}" for i in range(0, len(calls), 2))
    assert set(seconds) == {"a", "b"}  # a median per contender


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(variants=["baseline", "gdn"], model_size="d32l1", seq_len=16, batch_size=2,
                      contexts=[8, 24], new_tokens=2, rounds=1, peak_memory=False, out_dir=str(out))
    return run_bench(cfg), out


def test_bench_times_every_variant_against_the_first(report):
    result, _ = report
    base, gdn = result["variants"]["baseline"], result["variants"]["gdn"]
    assert base["train_ratio"] == 1 and [d["ratio"] for d in base["decode"]] == [1, 1]
    assert gdn["train_ratio"] == pytest.approx(gdn["train_tokens_per_s"] / base["train_tokens_per_s"])
    for g, b in zip(gdn["decode"], base["decode"]):
        assert g["ratio"] == pytest.approx(g["tokens_per_s"] / b["tokens_per_s"])
    assert [d["context"] for d in gdn["decode"]] == [8, 24]
    kv, delta = [d["state_bytes"] for d in base["decode"]], [d["state_bytes"] for d in gdn["decode"]]
    assert kv[1] > kv[0] and delta[0] == delta[1]  # a KV cache grows with the context; a delta state does not
    assert gdn["layer_pattern"] == "G" and gdn["params"] == memlab.build_model("gdn", "d32l1").num_params()
    assert result["metadata"]["memlab_version"] == memlab.__version__ and "memory" not in gdn  # (--no-peak-memory)


def test_bench_writes_json_markdown_and_a_plot(report):
    result, out = report
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(result))
    table = (out / "bench.md").read_text()
    assert "| gdn | " in table and "decode tok/s after 24" in table and "train tok/s (B=2, T=16, float32)" in table
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_times_only_the_parts_asked_for(tmp_path, capsys):
    main(["bench", "--variants", "ssm", "baseline", "--model-size", "d32l1", "--parts", "decode", "--contexts", "4",
          "--new-tokens", "1", "--rounds", "1", "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["variants"]) == ["ssm", "baseline"]  # the first is the baseline of the ratios
    assert "train_tokens_per_s" not in result["variants"]["ssm"] and result["variants"]["ssm"]["decode"]
    assert result["variants"]["ssm"]["decode"][0]["ratio"] == 1
    assert f"wrote {tmp_path}/bench.json" in capsys.readouterr().out
    for variant in ("ssm", "baseline"):  # each measured alone in a fresh process, after an unmeasured run
        memory = result["variants"][variant]["memory"]
        assert list(memory) == ["decode"] and memory["decode"]["context"] == 4 and memory["decode"]["peak_reset"]
        assert 0 < memory["decode"]["above_idle_mib"] < 40  # a d32l1 model; torch's first-use ~170 MB left out
    table = (tmp_path / "bench.md").read_text()
    assert "prefill+decode memory @ 4" in table and "decoding 1 sequence(s), 1 tokens per run" in table


def test_a_training_only_bench_says_nothing_of_decoding(tmp_path):
    result = run_bench(BenchConfig(variants=["baseline", "nano_baseline"], model_size="d32l1", seq_len=8, batch_size=1,
                                   rounds=1, parts=["train"], peak_memory=False, out_dir=str(tmp_path)))
    table = (tmp_path / "bench.md").read_text()
    assert "decod" not in table and "train tok/s (B=1, T=8, float32)" in table
    # timed as trained: its table of learned positions neither cut to --seq-len nor grown to the longest context
    assert result["variants"]["nano_baseline"]["params"] == memlab.build_model("nano_baseline", "d32l1").num_params()


def test_bench_trains_with_the_autocast_memlab_train_would_use(tmp_path, monkeypatch):
    """On CUDA memlab train autocasts to bf16 by default; bench had timed fp32 steps there."""
    from memlab.analysis import speed

    given, step = [], speed.train_step
    monkeypatch.setattr(speed, "train_step", lambda *a: given.append(a[3]) or step(*a))
    jobs = []
    measured = {"peak_rss_mib": 1.0, "above_idle_mib": 1.0, "peak_reset": True}
    monkeypatch.setattr(speed, "in_fresh_process", lambda fn, job: jobs.append(job) or measured)
    for precision, dtype in (("auto", None), ("bf16", torch.bfloat16)):  # auto: fp32 on this CPU
        given.clear()
        result = run_bench(BenchConfig(variants=["baseline"], model_size="d32l1", seq_len=8, batch_size=1, rounds=1,
                                       parts=["train"], precision=precision, out_dir=str(tmp_path)))
        assert given == [dtype] and result["metadata"]["train_precision"] == ("bfloat16" if dtype else "float32")
        assert jobs[-1].precision == precision
    assert "train tok/s (B=1, T=8, bfloat16)" in (tmp_path / "bench.md").read_text()
    given.clear()
    peak_memory(MemoryJob("baseline", "d32l1", "train", 1, seq_len=8, precision="bf16"))
    assert given == [torch.bfloat16] * 2  # the job's steps (an unmeasured run, then the measured one) autocast


def test_peak_memory_grows_with_the_training_batch():
    """Activations scale with B x T: 64 sequences of 128 tokens take well over 8 do."""
    small, large = (in_fresh_process(peak_memory, MemoryJob("baseline", "d32l1", "train", b, seq_len=128))
                    for b in (8, 64))
    assert large["above_idle_mib"] > small["above_idle_mib"] + 56 * 128 * 32 * 4 * 4 / 2**20


@pytest.mark.parametrize("args, fragment", [
    (["--variants", "baseline", "nope"], "unknown variant 'nope'; valid choices:"),
    (["--variants", "gdn", "gdn"], "--variants needs distinct variants"),
    (["--contexts", "0"], "--contexts must be >= 1, got 0"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--parts", "prefill"], "prefill"),
    (["--model-size", "huge"], "huge"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--variants", "baseline", "nano_baseline", "--model-size", "d32l1", "--contexts", "2048"],
     "nano_baseline at d32l1 has learned positions for 2048 tokens, fewer than the 2064 that"),
])
def test_bench_user_errors_are_one_line_exit_2(args, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--out-dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and fragment in err
    assert not (tmp_path / "out").exists()


def test_the_memory_column_names_the_context_decoded_after(report):
    """The longest context, which --contexts need not list last."""
    result, _ = report
    rows = {v: {**row, "decode": row["decode"][::-1], "memory": {"decode": {"above_idle_mib": 1.0, "context": 24}}}
            for v, row in result["variants"].items()}  # as --contexts 24 8 times them
    table = markdown_report({**result, "settings": {**result["settings"], "contexts": [24, 8]}, "variants": rows})
    assert "prefill+decode memory @ 24" in table


def test_an_even_number_of_runs_reports_their_median(monkeypatch):
    """Of runs taking 1 s and 3 s, the slower had been reported (the upper middle): their median is 2 s."""
    import memlab.analysis.timing as timing

    clock = iter([0.0, 1.0, 10.0, 13.0])  # (start, end) of each timed run
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    assert timing.timed(lambda: None, repeats=2, warmup=0) == 2.0
