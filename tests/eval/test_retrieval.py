"""Retrieval examples sized in tokens, with the needle where it was asked to be."""

from __future__ import annotations

import random
import re

import pytest

from memlab.eval.hub import EvalContext, EvalOptions
from memlab.eval.retrieval import retrieval_examples


@pytest.fixture
def ctx(trained_baseline, byte_tok):
    return EvalContext(trained_baseline, byte_tok, EvalOptions())


@pytest.mark.parametrize("task, unit", [("niah", 2 * len(" Alice has a purple lamp.")), ("sniah1", 60),
                                        ("sniah3", 60), ("niah:distractors=sky", len(" The sky is blue."))])
def test_examples_fill_but_never_exceed_the_context(ctx, task, unit):
    for length in (400, 700):
        examples = retrieval_examples(ctx, task, length, 4, random.Random(0))
        assert all(length - unit < len(e) <= length for e in examples), [len(e) for e in examples]


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("task", ["niah", "sniah1", "sniah2", "sniah3"])
def test_the_needle_is_at_the_requested_depth(ctx, byte_tok, task, depth):
    for example in retrieval_examples(ctx, task, 2048, 3, random.Random(1), depth=depth):
        text = byte_tok.decode(example.ids)
        haystack = text[text.find("\n") + 1 : text.index("<|query|>")]  # S-NIAH: after its one-line intro
        if task == "niah":
            name = re.search(r"What color is (.+)'s", text).group(1)
            start = max(0, haystack.index(f"{name} has a ") - 1)  # with its leading space, as the rest
            end = haystack.index(".", start) + 1
        else:
            start, end = re.search(r"One of the special magic \w+ for [\w-]+ is: [\w-]+\.", haystack).span()
        where = start / (len(haystack) - (end - start))  # 0: before the first sentence, 1: after the last
        assert abs(where - example.meta["depth"]) < 0.02, (task, where, example.meta["depth"])  # the recorded depth
        # a repeated short sentence (niah, sniah1) lands within 0.02; real prose sentences are long: 0.08
        assert abs(where - depth) < (0.08 if task in ("sniah2", "sniah3") else 0.02), (task, where)


@pytest.mark.parametrize("task", ["niah", "mqar"])
def test_the_examples_are_distinct_and_fewer_only_where_the_task_has_fewer(ctx, task):
    examples = retrieval_examples(ctx, task, 200, 30, random.Random(0))
    assert len({tuple(e.ids) for e in examples}) == len(examples) == 30
    # one key, two values, 7 query places: 14 examples exist (drawn with replacement, 30 had repeated them)
    few = retrieval_examples(ctx, "mqar:vocab_size=4,random_non_queries=false", 16, 30, random.Random(0))
    assert len({tuple(e.ids) for e in few}) == len(few) == 14


def test_mqar_in_an_odd_context_uses_the_even_length_below_it(ctx):
    """MQAR needs an even seq_len: an odd context length leaves one token unused instead of an error."""
    for length in (96, 97):
        examples = retrieval_examples(ctx, "mqar", length, 3, random.Random(0))
        assert [len(e) for e in examples] == [97] * 3  # 96 inputs and the last target
