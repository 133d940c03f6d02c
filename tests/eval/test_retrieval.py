"""Retrieval examples sized in tokens, with the needle where it was asked to be."""

from __future__ import annotations

import random

import pytest

from memlab.eval.hub import EvalContext, EvalOptions
from memlab.eval.retrieval import retrieval_examples


@pytest.fixture
def ctx(trained_baseline, byte_tok):
    return EvalContext(trained_baseline, byte_tok, EvalOptions())


@pytest.mark.parametrize("task, unit", [("niah", len(" The sky is blue.")), ("sniah1", 60), ("sniah3", 60)])
def test_examples_fill_but_never_exceed_the_context(ctx, task, unit):
    for length in (400, 700):
        examples = retrieval_examples(ctx, task, length, 4, random.Random(0))
        assert all(length - unit < len(e) <= length for e in examples), [len(e) for e in examples]


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_the_needle_is_at_the_requested_depth(ctx, byte_tok, depth):
    for task, needle in (("niah", " has a "), ("sniah1", "One of the special magic")):
        (example,) = retrieval_examples(ctx, task, 600, 1, random.Random(1), depth=depth)
        text = byte_tok.decode(example.ids)
        haystack = text[text.find("\n") + 1 : text.index("<|query|>")]  # S-NIAH: after its one-line intro
        start = haystack.rfind(".", 0, haystack.index(needle)) + 1  # the needle sentence's first character
        end = haystack.index(".", haystack.index(needle)) + 1
        where = start / (len(haystack) - (end - start))  # 0: first sentence, 1: last
        assert abs(where - depth) < 0.1, (task, where)
