"""memlab in EleutherAI's lm-evaluation-harness: scores against direct forwards, offline local tasks."""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import memlab
from memlab.data.tokenizer import build_tokenizer
from memlab.errors import MemlabError

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install 'memlab[lm-eval]'")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from memlab.eval import lm_eval_adapter  # noqa: E402
from memlab.eval.lm_eval_adapter import MemlabLM  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("byte")


def small_model(variant: str, tok):
    torch.manual_seed(0)
    return memlab.build_model(
        variant, "tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64
    ).eval()


@pytest.fixture(scope="module", params=["baseline", "nano_baseline"])  # RoPE, and learned positions (bounded)
def model(request, tok):
    return small_model(request.param, tok)


@pytest.fixture(scope="module")
def baseline(tok):
    return small_model("baseline", tok)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@torch.no_grad()
def direct_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """log p(continuation | context) from one unbatched forward over the whole sequence."""
    ids = torch.tensor([(context + continuation)[:-1]])
    logprobs = F.log_softmax(model(ids)[0].float(), dim=-1)  # (T - 1, V): position t predicts token t + 1
    rows = logprobs[len(context) - 1 :]
    target = torch.tensor(continuation)
    return float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


def test_loglikelihood_matches_an_unbatched_forward(model, tok):
    lm = MemlabLM(model=model, tokenizer=tok, batch_size=3, batch_tokens=64)  # forces several padded batches
    pairs = [("The cat", " sat"), ("a", "bcdefgh"), ("x = 1 +", " 2"), ("", "hello"), ("long " * 5, "end."),
             ("  ", "hello")]  # whitespace alone: lm-eval moves it into the continuation (had crashed the batch)
    got = lm.loglikelihood([request("loglikelihood", c, t) for c, t in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        stripped = context.rstrip()  # lm-eval moves a context's trailing spaces into the continuation
        context, continuation = stripped, context[len(stripped) :] + continuation
        ctx_ids = tok.encode(context) if context else [tok.eos_id]  # empty context: the EOS prefix
        want_lp, want_greedy = direct_logprob(model, ctx_ids, tok.encode(continuation))
        assert logprob == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy
        assert logprob < 0


def test_a_token_merged_across_the_boundary_scores_the_continuation_alone():
    """lm-eval's whole-then-split encoding had left "bar" no tokens after "foo" (merged into one):
    log-prob 0 and greedy, a choice that always wins (audit)."""
    bpe = build_tokenizer("bpe", texts=["foobar " * 300], vocab_size=300)
    assert len(bpe.encode("foobar")) < len(bpe.encode("foo")) + len(bpe.encode("bar"))  # the merge to guard
    model = small_model("baseline", bpe)
    lm = MemlabLM(model=model, tokenizer=bpe)
    assert lm._encode_pair("foo", "bar") == (bpe.encode("foo"), bpe.encode("bar"))
    assert lm._encode_pair("foo", " bar") == (bpe.encode("foo"), bpe.encode(" bar"))  # no merge: lm-eval's split
    ((logprob, greedy),) = lm.loglikelihood([request("loglikelihood", "foo", "bar")])
    assert (logprob, greedy) == pytest.approx(direct_logprob(model, bpe.encode("foo"), bpe.encode("bar")), abs=1e-4)
    assert logprob < 0


def test_a_continuation_beyond_max_length_is_refused(model, tok):
    """Its first tokens had gone unscored, a higher log-likelihood than the text's (audit)."""
    lm = MemlabLM(model=model, tokenizer=tok, max_length=16)
    with pytest.raises(MemlabError, match="a continuation of 20 tokens exceeds max_length=16"):
        lm.loglikelihood([request("loglikelihood", "a", "b" * 20)])


def test_greedy_flag_is_true_for_the_models_own_greedy_continuation(model, tok):
    lm = MemlabLM(model=model, tokenizer=tok)
    prompt = torch.tensor([tok.encode("abc")])
    greedy_ids = model.generate(prompt, max_new_tokens=3)[0, 3:].tolist()
    context_ids = tok.encode("abc")
    (_, greedy), = lm._loglikelihood_tokens([(None, context_ids, greedy_ids)])
    assert greedy
    wrong = [(greedy_ids[0] + 1) % 256, *greedy_ids[1:]]
    (_, greedy), = lm._loglikelihood_tokens([(None, context_ids, wrong)])
    assert not greedy


def test_rolling_loglikelihood_scores_every_token_once(model, tok):
    text = "def f(x):\n    return x * 2  # double it, then some more text to pass the window"
    ids = tok.encode(text)
    long = MemlabLM(model=model, tokenizer=tok, max_length=64)
    short = MemlabLM(model=model, tokenizer=tok, max_length=16, batch_size=2)
    assert len(ids) > 64
    for lm in (long, short):
        (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
        windows = map(make_disjoint_window, get_rolling_token_windows(ids, tok.eos_id, lm.max_length, 1))
        want = sum(direct_logprob(model, c, t)[0] for c, t in windows)
        assert got == pytest.approx(want, abs=1e-3)
    # when the window covers the document, it is the plain log-likelihood after the EOS prefix
    text = text[:40]
    (got,) = long.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert got == pytest.approx(direct_logprob(model, [tok.eos_id], tok.encode(text))[0], abs=1e-4)


def test_generate_until_under_a_horizon_ablation_recomputes_as_generate_does(tok):
    """GDN has no recurrent form of a horizon: decoding through its state had failed (audit)."""
    model = small_model("gdn", tok)
    lm = MemlabLM(model=model, tokenizer=tok)
    ids = torch.tensor([tok.encode("Once upon")])
    with memlab.ablate(model, "horizon", horizon=4):
        reference = tok.decode(model.generate(ids, max_new_tokens=6)[0, ids.shape[1] :].tolist())
        (got,) = lm.generate_until([request("generate_until", "Once upon", {"until": [], "max_gen_toks": 6})])
    assert got == reference.split("<|eos|>")[0]


def test_generate_until_decodes_through_the_state_and_stops(model, tok):
    model = copy.deepcopy(model)
    with torch.no_grad():  # larger weights: a greedy continuation of varied bytes, not one byte repeated
        for p in model.parameters():
            p.mul_(20) if p.dim() > 1 else None
    lm = MemlabLM(model=model, tokenizer=tok)
    prompt = "Once upon"
    ids = torch.tensor([tok.encode(prompt)])
    reference = tok.decode(model.generate(ids, max_new_tokens=12, eos_id=tok.eos_id)[0, ids.shape[1] :].tolist())
    reference = reference.split("<|eos|>")[0]
    assert len(set(reference)) >= 4  # a wrong state (or none) would decode other bytes
    (free,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 12})])
    assert free == reference
    at = next(i for i in range(2, len(reference) - 1) if reference.index(reference[i : i + 2]) == i)
    stop = reference[at : at + 2]  # first seen at `at`: the cut keeps that many characters
    (cut,) = lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 12})])
    assert cut == reference[:at]


def test_generate_until_keeps_the_prompt_and_takes_the_tasks_sampling_options(model, tok):
    lm = MemlabLM(model=model, tokenizer=tok, max_length=64)
    prompt = "Once upon a time"
    with pytest.raises(MemlabError, match="max_gen_toks=64 leaves no room for the prompt in max_length=64"):
        lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 64})])  # had kept 1 token
    # 16 prompt tokens and 48 new ones fill the 64 positions (learned ones too: the last token is not forwarded)
    lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 64 - 16})])
    greedy, = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 8})])
    nucleus = {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0, "top_p": 1e-6, "top_k": 0}
    assert lm.generate_until([request("generate_until", prompt, nucleus)] * 3) == [greedy] * 3  # a nucleus of one
    with pytest.raises(MemlabError, match=r"generation options \['num_beams'\] are not supported"):
        lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 8, "num_beams": 4})])


def test_a_model_needs_exactly_one_source_and_its_tokenizer(model_dir, baseline, tok):
    with pytest.raises(ValueError, match="give exactly one of checkpoint=DIR or model="):
        MemlabLM(checkpoint=str(model_dir), model=baseline, tokenizer=tok)
    with pytest.raises(ValueError, match="give exactly one of checkpoint=DIR or model="):
        MemlabLM()
    with pytest.raises(ValueError, match="a model object needs its tokenizer"):
        MemlabLM(model=baseline)


def test_an_unavailable_cuda_device_falls_back_to_the_cpu(model_dir, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lm = MemlabLM(checkpoint=str(model_dir), device="cuda:0")  # lm-eval's default device
    assert lm.device.type == "cpu" and "device cuda:0 is not available" in caplog.text


def test_the_tokenizer_name_tells_tokenizers_of_one_kind_apart(baseline):
    """lm-eval keys its cached requests by it: two BPE tokenizers must not share one."""
    names = {MemlabLM(model=baseline, tokenizer=build_tokenizer("bpe", texts=[t * 50], vocab_size=300)).tokenizer_name
             for t in ("foo bar ", "baz qux ")}
    assert len(names) == 2 and all(name.startswith("memlab-bpe-") for name in names)


class InputRecorder:
    """The model, recording the ids of every forward it is given."""

    def __init__(self, model):
        self.model, self.inputs = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, ids, *args, **kwargs):
        self.inputs.append(ids.tolist())
        return self.model(ids, *args, **kwargs)


@pytest.mark.parametrize("batch_size, batch_tokens", [(2, 8192), (3, 24), ("auto:4", 24)])  # auto:N from lm-eval
def test_scoring_batches_keep_to_the_row_and_token_budgets(baseline, tok, batch_size, batch_tokens):
    lm = MemlabLM(model=baseline, tokenizer=tok, batch_size=batch_size, batch_tokens=batch_tokens)
    lm.model = recorder = InputRecorder(baseline)
    pairs = [("a", "b"), ("abcdefg", "h"), ("abc", "d"), ("abcdefg", "hi"), ("ab", "c"), ("abcde", "f")]  # 1..8 wide
    got = lm.loglikelihood([request("loglikelihood", c, t) for c, t in pairs])
    max_rows = batch_size if isinstance(batch_size, int) else len(pairs)
    shapes = [(len(batch), len(batch[0])) for batch in recorder.inputs]
    assert sum(rows for rows, _ in shapes) == len(pairs)
    assert all(rows <= max_rows and rows * width <= batch_tokens for rows, width in shapes)
    for (context, continuation), (logprob, _) in zip(pairs, got):
        assert logprob == pytest.approx(direct_logprob(baseline, tok.encode(context), tok.encode(continuation))[0],
                                        abs=1e-4)


class CacheRecorder:
    """lm-eval's cache hook, recording what it is given."""

    def __init__(self):
        self.entries = []

    def add_partial(self, kind, request, result):
        self.entries.append((kind, request, result))


def test_every_answer_reaches_lm_evals_cache(baseline, tok):
    lm = MemlabLM(model=baseline, tokenizer=tok, max_length=16)
    lm.cache_hook = hook = CacheRecorder()
    (scored,) = lm.loglikelihood([request("loglikelihood", "The cat", " sat")])
    (rolled,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", "a document of several windows")])
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 4}
    (text,) = lm.generate_until([request("generate_until", "Once", gen_kwargs)])
    assert hook.entries == [("loglikelihood", ("The cat", " sat"), scored),  # (no entry per rolling window)
                            ("loglikelihood_rolling", ("a document of several windows",), rolled),
                            ("generate_until", ("Once", gen_kwargs), text)]


def generate(lm, prompt: str, **gen_kwargs) -> str:
    (text,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 8, **gen_kwargs})])
    return text


@pytest.fixture
def scripted(monkeypatch):
    """Makes generation draw the given token ids, one per step, whatever the model predicts (the tiny
    random models repeat one byte)."""
    def script(ids: list[int]):
        steps = iter(ids)
        monkeypatch.setattr(lm_eval_adapter, "sample_next", lambda *args: torch.tensor([next(steps)]))
    return script


def test_generation_stops_at_the_earliest_stop_sequence(baseline, tok, scripted):
    lm = MemlabLM(model=baseline, tokenizer=tok)
    scripted(tok.encode("abcdefgh"))
    assert generate(lm, "Once", until=["bcd", "d"]) == "a"  # both complete with "d": the cut is at the earlier
    scripted(tok.encode("abcdefgh"))
    assert generate(lm, "Once", until=["", "z"]) == "abcdefgh"  # an empty stop sequence stops nothing


def test_generation_ends_at_the_end_of_text_token(baseline, tok, scripted):
    lm = MemlabLM(model=baseline, tokenizer=tok)
    scripted([*tok.encode("ab"), tok.eos_id, *tok.encode("cdefg")])
    assert generate(lm, "Once") == "ab"
    scripted(tok.encode("ab<|eos|>cdefg"))  # the special token's string, as plain text, ends nothing
    assert generate(lm, "Once", max_gen_toks=12) == "ab<|eos|>cde"


def test_a_long_prompt_keeps_the_tokens_nearest_the_continuation(model, tok):
    lm = MemlabLM(model=model, tokenizer=tok, max_length=16)
    lm.model = recorder = InputRecorder(model)
    prompt = "The quick brown fox jumps over the lazy dog"
    generate(lm, prompt, max_gen_toks=4)
    assert recorder.inputs[0] == [tok.encode(prompt)[-12:]]  # the prefill: 16 - 4 positions


def write_tasks(tmp_path, answers: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """Three local tasks (multiple choice, rolling perplexity, generation) over JSONL files;
    ``answers``: the generation task's targets (default: the right choices)."""
    docs = [
        {"question": "1 + 1 =", "choices": [" 2", " 3", " 11"], "label": 0, "text": "one and one make two."},
        {"question": "The sky is", "choices": [" blue", " green"], "label": 0, "text": "the sky is blue today."},
        {"question": "def f():", "choices": [" return 1", " 42 42"], "label": 1, "text": "def f():\n    return 1"},
    ]
    for d, answer in zip(docs, answers or [d["choices"][d["label"]] for d in docs]):
        d["answer"] = answer
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    tasks = {
        "tiny_choice": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n",
        "tiny_ppl": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
        "tiny_gen": "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n",
    }
    paths = []
    for name, body in tasks.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"task: {name}\n{common}{body}")
        paths.append(str(path))
    return paths, docs


def test_simple_evaluate_runs_local_tasks_offline(baseline, tok, tmp_path):
    import lm_eval

    from memlab.eval.lm_eval_suite import task_manager

    own = [greedy_text(baseline, tok, q, 4).split("\n")[0] for q in ("1 + 1 =", "The sky is")]
    paths, docs = write_tasks(tmp_path, answers=[*own, "never generated"])  # the model's own words: 2 of 3 right
    lm = MemlabLM(model=baseline, tokenizer=tok)
    out = lm_eval.simple_evaluate(model=lm, tasks=paths, task_manager=task_manager(paths), log_samples=False,
                                  bootstrap_iters=0)
    results = out["results"]
    assert results["tiny_choice"]["acc,none"] == pytest.approx(choice_accuracy(baseline, tok, docs))
    total = sum(lm.loglikelihood_rolling([request("loglikelihood_rolling", d["text"])])[0] for d in docs)
    n_bytes = sum(len(d["text"].encode()) for d in docs)
    assert results["tiny_ppl"]["bits_per_byte,none"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-5)
    assert results["tiny_gen"]["exact_match,none"] == pytest.approx(2 / 3)


def greedy_text(model, tok, prompt: str, new_tokens: int) -> str:
    """The model's greedy continuation of ``prompt`` (up to an end-of-sequence), from model.generate."""
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=new_tokens, eos_id=tok.eos_id)[0, ids.shape[1] :].tolist()
    return tok.decode(out).split("<|eos|>")[0]


def choice_accuracy(model, tok, docs: list[dict]) -> float:
    """The multiple-choice accuracy of ``docs`` from direct forwards: the choice of highest
    log-likelihood (after lm-eval's target delimiter, a space) is the label."""
    picks = []
    for d in docs:
        scores = [direct_logprob(model, tok.encode(d["question"]), tok.encode(" " + c))[0] for c in d["choices"]]
        picks.append(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    return sum(picks) / len(picks)


def test_the_memlab_suite_reports_metrics_with_counts(baseline, tok, tmp_path):
    from memlab.eval.hub import EvalContext, EvalOptions
    from memlab.eval.lm_eval_suite import run

    paths, docs = write_tasks(tmp_path)
    payload = run(EvalContext(baseline, tok, EvalOptions(tasks=paths[:2], samples=2)))
    choice = payload["tasks"]["tiny_choice"]
    assert choice["n"] == 2 and payload["limit"] == 2
    acc = choice["metrics"]["acc"]
    lm = MemlabLM(model=baseline, tokenizer=tok)
    assert acc["value"] == pytest.approx(choice_accuracy(baseline, tok, docs[:2])) and acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    total = sum(lm.loglikelihood_rolling([request("loglikelihood_rolling", d["text"])])[0] for d in docs[:2])
    bits_per_byte = -total / sum(len(d["text"].encode()) for d in docs[:2]) / math.log(2)
    assert payload["tasks"]["tiny_ppl"]["metrics"]["bits_per_byte"]["value"] == pytest.approx(bits_per_byte, rel=1e-5)


def test_the_suite_rejects_unknown_tasks_and_missing_files(baseline, tok, tmp_path):
    from memlab.eval.hub import EvalContext, EvalOptions
    from memlab.eval.lm_eval_suite import run

    with pytest.raises(MemlabError, match="not found"):
        run(EvalContext(baseline, tok, EvalOptions(tasks=[str(tmp_path / "nope.yaml")])))
    with pytest.raises(MemlabError, match="needs --tasks"):
        run(EvalContext(baseline, tok, EvalOptions(tasks=None)))


def test_missing_lm_eval_names_the_extra(monkeypatch):
    from memlab.eval.lm_eval_suite import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(MemlabError, match=r"pip install 'memlab\[lm-eval\]'"):
        require_lm_eval()


@pytest.fixture
def model_dir(baseline, tok, tmp_path):
    """The baseline saved as a model directory with its tokenizer (what a checkpoint or an export holds)."""
    baseline.save(tmp_path / "model")
    tok.save(tmp_path / "model")
    return tmp_path / "model"


def test_memlab_eval_suite_lm_eval_writes_a_results_file(model_dir, baseline, tok, tmp_path, capsys):
    from memlab.cli import main
    from memlab.eval.schema import read_results

    paths, docs = write_tasks(tmp_path)
    main(["eval", "--checkpoint", str(model_dir), "--suite", "lm-eval", "--tasks", ",".join(paths[:2]),
          "--samples", "3", "--out-dir", str(tmp_path / "out")])
    doc = read_results(tmp_path / "out" / "results_lm-eval.json")
    assert doc["suite"] == "lm-eval" and set(doc["results"]["tasks"]) == {"tiny_choice", "tiny_ppl"}
    acc = doc["results"]["tasks"]["tiny_choice"]["metrics"]["acc"]
    assert acc["n"] == 3 and acc["value"] == pytest.approx(choice_accuracy(baseline, tok, docs))


def test_lm_eval_command_line_with_memlab_registered(model_dir, baseline, tok, tmp_path, monkeypatch):
    """`python -m memlab.eval.lm_eval_adapter ...` is lm-eval's own CLI with `--model memlab` available."""
    from memlab.eval.lm_eval_adapter import main

    paths, docs = write_tasks(tmp_path)
    out = tmp_path / "harness"
    monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "memlab", "--model_args", f"checkpoint={model_dir}",
                                      "--tasks", paths[0], "--limit", "2", "--output_path", str(out)])
    main()
    (written,) = out.rglob("results_*.json")
    expected = choice_accuracy(baseline, tok, docs[:2])
    assert json.loads(written.read_text())["results"]["tiny_choice"]["acc,none"] == pytest.approx(expected)


def test_lm_eval_command_line_names_a_missing_checkpoint_in_one_line(tmp_path, monkeypatch, capsys):
    """A MemlabError raised inside lm-eval's CLI had ended in a traceback."""
    from memlab.eval.lm_eval_adapter import main

    paths, _ = write_tasks(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "memlab", "--model_args", f"checkpoint={tmp_path / 'nope'}",
                                      "--tasks", paths[0], "--device", "cpu"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"memlab: error: no such checkpoint or model directory: {tmp_path / 'nope'}"

