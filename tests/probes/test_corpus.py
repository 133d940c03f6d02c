"""Probe text: token spans from a `tokenizers` backend's offsets, and the text field of a source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from local_tokenizers import metaspace_tokenizer

from memlab.data.tokenizer import build_tokenizer
from memlab.errors import MemlabError
from memlab.probes.corpus import encode_spans, read_probe_text, token_spans

CODE = "class A:\n    def f(self, x):\n        return g(x, 'héllo 🙂')\n\nprint(42)\n"


def test_a_metaspace_tokenizer_is_probed_through_its_offsets(tmp_path):
    """One id decoded alone drops its meta-space, so the decode path could not align such a tokenizer."""
    tok = metaspace_tokenizer(CODE)
    ids = tok.encode(CODE)
    assert token_spans(tok, CODE, ids) is None  # what the probes had used: every document skipped
    offset_ids, spans = encode_spans(tok, CODE)
    assert offset_ids == ids and spans.shape == (len(ids), 2)
    for token, (start, end) in zip(tok._tok.convert_ids_to_tokens(ids), spans):
        assert token.lstrip("▁") == CODE[start:end].replace(" ", "▁").lstrip("▁")
    (tmp_path / "a.py").write_text(CODE)
    probe = read_probe_text(f"files:{tmp_path}/a.py", tok, 1000, 16, documents="all")
    assert (probe.documents, probe.skipped_documents, probe.tokens) == (1, 0, len(ids))
    assert probe.flat("indent")[ids.index(tok._tok.convert_tokens_to_ids("▁return"))] == 2


def test_byte_level_bpe_offsets_agree_with_the_decoded_spans():
    bpe = build_tokenizer("bpe", texts=[CODE * 20, "hello world " * 50], vocab_size=300)
    ids, spans = encode_spans(bpe, CODE)
    decoded = token_spans(bpe, CODE, ids)
    # ids that only decode together (the bytes of "é", "🙂") share one decoded span; offsets may be finer inside it
    shared = np.zeros(len(ids), dtype=bool)
    same = (decoded[1:] == decoded[:-1]).all(axis=1)
    shared[1:] |= same
    shared[:-1] |= same
    assert 0 < shared.sum() < len(ids)
    np.testing.assert_array_equal(spans[~shared], decoded[~shared])
    assert (spans[shared, 0] >= decoded[shared, 0]).all() and (spans[shared, 1] <= decoded[shared, 1]).all()
    byte = build_tokenizer("byte")
    assert byte.encode_with_offsets(CODE) is None  # the byte tokenizer keeps the decode path
    ids, spans = encode_spans(byte, CODE)
    np.testing.assert_array_equal(spans, token_spans(byte, CODE, ids))


def test_read_probe_text_takes_a_text_field(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": 1, "body": "def f(x):\n    return x\n"}) + "\n")
    byte = build_tokenizer("byte")
    probe = read_probe_text(f"files:{tmp_path}/rows.jsonl", byte, 1000, 64, documents="all", text_field="body")
    assert probe.tokens == len("def f(x):\n    return x\n")
    with pytest.raises(MemlabError, match="none of the text fields"):
        read_probe_text(f"files:{tmp_path}/rows.jsonl", byte, 1000, 64, documents="all")
