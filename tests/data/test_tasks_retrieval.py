"""Retrieval tasks: fact NIAH positions, RULER S-NIAH variants, Zoology MQAR structure, task specs."""

from __future__ import annotations

import random
import re
import uuid

import pytest

from memlab.data.tasks import MQAR, SNIAH, FactNIAH, get_task, parse_task_spec, task_levels
from memlab.data.tasks.retrieval import NAMES, NOISE, SKY, _nearest, default_prose
from memlab.errors import MemlabError

FACT = re.compile(r"(\w+) has a (\w+) (\w+)\.")


def facts(prompt: str) -> list[tuple[str, str, str]]:
    return FACT.findall(prompt)


@pytest.mark.parametrize(
    "position, index", [("start", lambda n: 0), ("middle", lambda n: n // 2), ("end", lambda n: n)]
)
def test_fact_niah_positions(position, index):
    rng = random.Random(0)
    for n in (0, 10, 31):
        ex = FactNIAH(position)(rng, n)
        found = facts(ex.prompt)
        assert len(found) == n + 1 and " ".join(f"{a} has a {b} {c}." for a, b, c in found) == ex.prompt
        name, color, obj = found[ex.meta["index"]]
        assert ex.meta["index"] == index(n)
        assert ex.answer == color and ex.query == f"What color is {name}'s {obj}?"


def test_only_the_name_tells_the_fact_from_the_distractors():
    """Distractors are facts about the same object of other people, each named once."""
    rng = random.Random(3)
    for n in (1, 30, 100):
        ex = FactNIAH()(rng, n)
        names, colors, objects = zip(*facts(ex.prompt))
        asked = names[ex.meta["index"]]
        assert len(set(names)) == n + 1 and set(objects) == {objects[0]} and asked in ex.query
    ex = FactNIAH()(rng, len(NAMES) + 50)  # more distractors than names: theirs repeat, never the asked one
    names = [name for name, _, _ in facts(ex.prompt)]
    assert names.count(names[ex.meta["index"]]) == 1 and len(names) == len(NAMES) + 51


def test_the_has_a_shortcut_answers_no_better_than_chance():
    """The colour after the first 'has a' had answered every example (the distractors had no fact)."""
    rng = random.Random(0)
    examples = [FactNIAH()(rng, 30) for _ in range(400)]
    shortcut = [re.search(r"has a (\w+)", e.prompt).group(1) == e.answer for e in examples]
    last = [re.findall(r"has a (\w+)", e.prompt)[-1] == e.answer for e in examples]
    assert sum(shortcut) / 400 < 0.25 and sum(last) / 400 < 0.25  # chance 1/8, plus the fact first (1/31)
    assert {e.meta["chance"] for e in examples} == {1 / 8}


def test_the_sources_sky_distractors_are_answered_by_the_has_a_shortcut():
    """niah:distractors=sky is the source experiments' task: one fact among copies of one sentence."""
    rng = random.Random(0)
    task = get_task("niah:distractors=sky,position=middle")
    for n in (0, 10, 100):
        ex = task(rng, n)
        assert ex.prompt.count(SKY) == n and len(facts(ex.prompt)) == 1
        assert ex.meta["index"] == n // 2 and re.search(r"has a (\w+)", ex.prompt).group(1) == ex.answer
    assert task.distractor_sentences() == [SKY] and len(FactNIAH().distractor_sentences()) == 8 * len(NAMES)


def test_fact_niah_depth_percent():
    ex = FactNIAH(depth=25)(random.Random(0), 40)
    assert ex.meta["index"] == 10 and facts(ex.prompt)[10][0] in ex.query


def test_fact_niah_depth_is_the_nearest_sentence_index():
    """The index had been truncated, not rounded: 66% of 10 distractors put the fact after 6 of them, not 7."""
    indices = [FactNIAH(depth=d)(random.Random(0), 10).meta["index"] for d in (0, 34, 66, 96, 100)]
    assert indices == [0, 3, 7, 10, 10]  # 0, 3.4, 6.6, 9.6, 10 distractors before it


def test_the_asked_name_stays_unique_however_many_distractors_repeat():
    """Past len(NAMES) - 1 distractors their names repeat; refilled from every name, the asked one had been
    among them too (at 300 distractors nearly always), and the question had had two answers."""
    for seed in range(5):
        ex = FactNIAH()(random.Random(seed), 300)
        names = [name for name, _, _ in facts(ex.prompt)]
        asked = names[ex.meta["index"]]
        assert len(names) == 301 and f"{asked}'s" in ex.query and names.count(asked) == 1
        assert set(names) == set(NAMES)  # the 127 others, each used more than once


def test_fact_niah_random_position_covers_every_bucket():
    rng = random.Random(1)
    examples = [FactNIAH()(rng, 100) for _ in range(200)]
    assert {e.meta["bucket"] for e in examples} == {"early", "middle", "late"}
    assert all(0 <= e.meta["depth"] <= 1 for e in examples)
    assert task_levels("niah") == (0, 10, 30, 50, 100)


def needles(prompt: str) -> list[tuple[str, str]]:
    return re.findall(r"One of the special magic (?:numbers|UUIDs) for ([\w-]+) is: ([\w-]+)\.", prompt)


@pytest.mark.parametrize(
    "params",
    [
        dict(variant=1),
        dict(variant=2),
        dict(variant=3),
        dict(variant=2, n_keys=4),  # multi-key: three distractor needles
        dict(variant=1, n_values=3),  # multi-value: every value of the key, in text order
        dict(variant=3, n_keys=3, n_queries=2),  # multi-query: values in query order
    ],
)
def test_sniah_answers_are_the_queried_needles(params):
    task = SNIAH(**params)
    rng = random.Random(2)
    for length in (512, 1024):
        ex = task(rng, length)
        found = needles(ex.prompt)
        n_keys, n_values, n_queries = params.get("n_keys", 1), params.get("n_values", 1), params.get("n_queries", 1)
        assert len(found) == n_keys - n_queries + n_queries * n_values
        queried = re.findall(r"[a-z]+-[a-z]+", ex.query)
        assert len(queried) == n_queries and len({k for k, _ in found}) == n_keys
        expected = [v for q in queried for k, v in found if k == q]  # query order, then text order
        assert ex.answer == ", ".join(expected)
        if params["variant"] == 3:
            assert all(str(uuid.UUID(v)) == v for v in expected)
        else:
            assert all(re.fullmatch(r"\d{7}", v) for v in expected)
        assert 0.8 * length <= ex.meta["context_tokens"] <= length  # default count: UTF-8 bytes


def test_sniah_haystacks():
    rng = random.Random(3)
    noise = SNIAH(variant=1)(rng, 800).prompt.split("\n", 1)[1]
    hay = re.sub(r"One of the special magic numbers for [\w-]+ is: \d+\.", "", noise)
    pieces, sentences = re.split(r"(?<=\.)\s+", hay.strip()), re.split(r"(?<=\.)\s+", NOISE)
    assert set(pieces[:-1]) <= set(sentences) and any(s.startswith(pieces[-1]) for s in sentences)
    prose = SNIAH(variant=2)(rng, 800).prompt
    assert any(s in prose for s in default_prose())
    custom = SNIAH(variant=2, haystack=["Custom sentence one.", "Custom sentence two."])(rng, 600)
    assert "Custom sentence two." in custom.prompt


def test_sniah_depth_places_the_needle():
    rng = random.Random(4)
    for depth in (0, 25, 50, 75, 100):
        ex = SNIAH(variant=2, depth=depth)(rng, 2048)
        body = ex.prompt.split("\n", 1)[1]
        at = body.index("One of the special magic") / len(body)
        assert abs(at - depth / 100) < 0.12 and abs(ex.meta["depth"] - depth / 100) < 0.05


def test_sniah_depth_counts_the_other_needles():
    """With 4 keys, the recorded depth had left the other needles out and put the queried one first at a
    shared boundary: at depth 100 in 256 BPE tokens it had been off by up to 0.37 (audit)."""
    rng = random.Random(6)
    for depth in (0, 50, 100):
        for _ in range(20):
            ex = SNIAH(variant=1, depth=depth, n_keys=4)(rng, 1024)
            body = ex.prompt.split("\n", 1)[1]
            key = re.search(r"for ([\w-]+) mentioned", ex.query).group(1)
            queried = re.search(rf"One of the special magic numbers for {key} is: \d+\.", body)
            around = len(body) - len(queried.group())  # byte tokens of everything else, spaces included
            assert ex.meta["depth"] == pytest.approx(queried.start() / around, abs=0.02)


def test_nearest_boundary_ties_go_to_the_later_one():
    """Of two boundaries equally near the target depth, the later one (round half up), as documented."""
    assert _nearest([0, 10], 5) == 1
    targets = (-3, 0, 4.9, 5, 10, 14.9, 15, 19, 20, 25)
    assert [_nearest([0, 10, 20], t) for t in targets] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_sniah_depth_is_the_nearest_sentence_boundary_in_tokens(variant):
    pool = [f"Filler {'word ' * (1 + 12 * (i % 3))}ends here." for i in range(6)]  # of very different lengths
    rng = random.Random(5)
    for depth in (0, 10, 25, 50, 75, 90, 100):
        for length in (512, 1024):
            ex = SNIAH(variant=variant, depth=depth, haystack=pool)(rng, length)
            body = ex.prompt.split("\n", 1)[1]
            needle = r"One of the special magic \w+ for [\w-]+ is: [\w-]+\."
            at = re.search(needle, body).start()
            hay = re.sub(" ?" + needle, "", body).strip()
            total = len(hay) + 1  # tokens (bytes) of the haystack, each sentence with its separating space
            boundaries = [0, *(m.end() for m in re.finditer(r"\. ", hay)), total]
            nearest = min(boundaries, key=lambda b: (abs(b - depth / 100 * total), -b))  # ties: the later one
            assert at == nearest and ex.meta["depth"] == pytest.approx(at / total), (depth, length)


def test_a_sentence_that_fills_the_budget_exactly_is_kept_whole():
    """A haystack sentence costing exactly the rest of the budget had been treated as too long and re-joined
    from its words: the line break of a user's haystack lost, the haystack 4 bytes short of its budget."""
    sentence = "A haystack line that breaks\n    and goes on."
    task, cost = SNIAH(variant=2, haystack=[sentence]), len(" " + sentence)
    for n in (1, 3):
        hay = task._haystack(random.Random(0), n * cost)
        assert hay == [sentence] * n and sum(len(" " + s) for s in hay) == n * cost
    assert task._haystack(random.Random(0), 2 * cost + 3) == [sentence, sentence, "A"]  # the rest: whole words


def test_sniah_counts_with_a_given_tokenizer(byte_tok):
    calls = []

    def count(text: str) -> int:
        calls.append(text)
        return len(byte_tok.encode(text)) // 2  # a tokenizer twice as compact as bytes

    ex = SNIAH(variant=1, count_tokens=count)(random.Random(0), 400)
    assert calls and len(ex.prompt.encode()) > 700  # twice the bytes for the same token budget


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: SNIAH(variant=4), "unknown S-NIAH variant"),
        (lambda: SNIAH(depth=150), "percentage"),
        (lambda: SNIAH(n_keys=1, n_queries=2), "n_queries <= n_keys"),
        (lambda: SNIAH(variant=1)(random.Random(0), 100), "too short"),
        (lambda: FactNIAH("top"), "unknown niah position"),
        (lambda: FactNIAH(distractors="grass"), "unknown niah distractors 'grass'; valid choices: people, sky"),
        (lambda: FactNIAH()(random.Random(0), -1), "needs difficulty >= 0"),
    ],
)
def test_retrieval_parameter_errors(make, fragment):
    with pytest.raises(MemlabError, match=fragment):
        make()


def test_mqar_structure():
    V, T = 64, 64
    task = MQAR(vocab_size=V, seq_len=T)
    rng = random.Random(5)
    for n in (1, 4, 16):
        ex = task(rng, n)
        assert len(ex.ids) == len(ex.loss_mask) == T + 1 and all(0 <= t < V for t in ex.ids)
        keys, values = ex.ids[0 : 2 * n : 2], ex.ids[1 : 2 * n : 2]
        assert all(1 <= k < V // 2 for k in keys) and all(V // 2 <= v < V for v in values)
        assert len(set(keys)) == n
        table = dict(zip(keys, values))
        scored = [i for i, m in enumerate(ex.loss_mask) if m]
        assert len(scored) == n and min(scored) > 2 * n  # queries come after the context
        assert sorted(ex.ids[i - 1] for i in scored) == sorted(keys)  # every key is queried once
        assert all(ex.ids[i] == table[ex.ids[i - 1]] for i in scored)
        assert [i for i, t in enumerate(ex.ids[2 * n :], 2 * n) if t in table] == [i - 1 for i in scored]
        # a key occurs only where it is bound and where it is queried: random filler had repeated keys with
        # other ids after them (half the examples at 4 pairs of a byte vocabulary, audit)


def test_mqar_draws_no_special_token(byte_tok):
    task = get_task("mqar", tokenizer=byte_tok, seq_len=128)  # byte ids 256..260 are pad, bos, eos, sep, query
    assert task.reserved_ids == frozenset(byte_tok.specials.values())
    rng = random.Random(0)
    ids = {t for _ in range(200) for t in task(rng, 8).ids}
    assert ids.isdisjoint(task.reserved_ids) and max(ids) < 256
    quiet = MQAR(vocab_size=64, seq_len=64, random_non_queries=False, reserved_ids=frozenset({0, 1}))
    ex = quiet(rng, 4)
    assert ex.ids.count(2) == 64 + 1 - 4 * 2 - 4 * 2  # the filler is the first free id, and no key or value


def test_mqar_gaps_follow_a_power_law():
    rng = random.Random(6)
    task = MQAR(vocab_size=512, seq_len=512)
    gaps = [i for _ in range(100) for i, m in enumerate(task(rng, 4).loss_mask) if m]
    near = sum(g < 8 + 128 for g in gaps)
    assert near > 0.6 * len(gaps)  # most queries in the first quarter of the query region


@pytest.mark.parametrize(
    "task, n, fragment",
    [
        (MQAR(vocab_size=64, seq_len=32), 9, "seq_len >= 4 \\* pairs"),
        (MQAR(vocab_size=16, seq_len=64), 8, "too few keys"),
        (MQAR(seq_len=33), 2, "even seq_len"),
    ],
)
def test_mqar_impossible_parameters(task, n, fragment):
    with pytest.raises(MemlabError, match=fragment):
        task(random.Random(0), n)


def test_task_specs(byte_tok):
    assert parse_task_spec("sniah2:n_keys=4,depth=50.5,random_non_queries=false") == (
        "sniah2",
        {"n_keys": 4, "depth": 50.5, "random_non_queries": False},
    )
    sniah = get_task("sniah3:n_keys=2", tokenizer=byte_tok)
    assert isinstance(sniah, SNIAH) and sniah.variant == 3 and sniah.n_keys == 2
    mqar = get_task("mqar", tokenizer=byte_tok, seq_len=128)
    assert mqar.vocab_size == byte_tok.vocab_size and mqar.seq_len == 128
    assert get_task("mqar:seq_len=64", seq_len=128).seq_len == 64  # explicit parameters win
    with pytest.raises(MemlabError, match="has no parameter"):
        get_task("niah:n_keys=3")
    with pytest.raises(MemlabError, match="key=value"):
        get_task("niah:middle")
    # a parameter of the wrong type had failed at the first batch, or in a comparison of int and str
    with pytest.raises(MemlabError, match=re.escape("'sniah3:n_values=1.5': n_values must be of type int, got 1.5")):
        get_task("sniah3:n_values=1.5", tokenizer=byte_tok)
    with pytest.raises(MemlabError, match=re.escape("depth must be of type float | None, got 'abc'")):
        get_task("niah:depth=abc", tokenizer=byte_tok)
    with pytest.raises(MemlabError, match="unknown task 'haystack'"):
        task_levels("haystack")


def test_every_retrieval_example_records_its_chance_level():
    rng = random.Random(0)
    assert SNIAH(variant=1)(rng, 600).meta["chance"] == pytest.approx(1 / 9e6)
    assert SNIAH(variant=2, n_keys=2, n_queries=2)(rng, 600).meta["chance"] == pytest.approx(1 / 9e6**2)
    assert SNIAH(variant=3)(rng, 600).meta["chance"] == 2.0**-122
    assert MQAR(vocab_size=64, seq_len=32)(rng, 3).meta["chance"] == pytest.approx(1 / 6)  # 3 values, 3! orders


def test_sniah_chance_is_that_of_guessing_every_answered_value():
    """A multi-value example answers each queried key's n_values values; its chance had counted one per key."""
    rng = random.Random(0)
    for task, one in ((SNIAH(variant=1, n_values=2), 1 / 9_000_000),
                      (SNIAH(variant=3, n_keys=3, n_values=3, n_queries=2), 2.0**-122)):  # fmt: skip
        ex = task(rng, 1200)
        answered = ex.answer.split(", ")
        assert len(answered) == task.n_values * task.n_queries and ex.meta["chance"] == one ** len(answered)
    assert SNIAH(variant=1, n_values=2)(rng, 600).meta["chance"] == (1 / 9e6) ** 2
