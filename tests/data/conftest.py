"""Shared fixtures of the data tests: a byte tokenizer, a tiny on-disk corpus and its shards."""

from __future__ import annotations

import pytest

from memlab.data.text import prepare_shards
from memlab.data.tokenizer import build_tokenizer

DOCUMENTS = [
    f"Document {i}: the value {i * 37 % 101} is stored under key k{i}. " + "def f(x):\n    return x + 1\n" * (i % 5 + 1)
    for i in range(60)
]


@pytest.fixture(scope="session")
def documents() -> list[str]:
    """The texts of the files in ``corpus_dir``, in file order."""
    return list(DOCUMENTS)


@pytest.fixture(scope="session")
def byte_tok():
    return build_tokenizer("byte")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """60 small text files."""
    d = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(DOCUMENTS):
        (d / f"doc_{i:03d}.txt").write_text(text)
    return d


@pytest.fixture(scope="session")
def byte_shards(corpus_dir, tmp_path_factory, byte_tok):
    """The corpus prepared with the byte tokenizer, 20% validation, small shard files."""
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out, val_fraction=0.2, shard_tokens=1000)
    return out
