"""Tokenizers: round trips, digits one per token, specials, hashes, save/load, local HF tokenizers."""

from __future__ import annotations

import json

import pytest

from memlab.data.tokenizer import (
    BPE_FILE,
    META_FILE,
    SPECIAL_TOKENS,
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    build_tokenizer,
    check_tokenizer,
    load_tokenizer,
)
from memlab.errors import MemlabError

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. 12345 + 67890 = 80235.",
    "for i in range(100):\n    print(i * 2, 'héllo wörld')\n",
] * 20
SAMPLE = "x = 90210 + foo(<|eos|>)  # naïve ✓ 3.14"


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("bpe", texts=TEXTS, vocab_size=320)


def test_byte_round_trip_and_specials(byte_tok):
    ids = byte_tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))  # "<|eos|>" in text stays bytes
    assert byte_tok.decode(ids) == SAMPLE
    assert byte_tok.vocab_size == 256 + len(SPECIAL_TOKENS)
    specials = [byte_tok.pad_id, byte_tok.bos_id, byte_tok.eos_id, byte_tok.sep_id, byte_tok.query_id]
    assert len(set(specials)) == 5 and min(specials) >= 256 and max(specials) < byte_tok.vocab_size
    assert byte_tok.decode([*byte_tok.encode("ab"), byte_tok.eos_id]) == "ab<|eos|>"


def test_bpe_round_trip_vocab_and_digits(bpe):
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size <= 320
    assert bpe.decode(bpe.encode(SAMPLE)) == SAMPLE  # byte-level: unseen characters still round-trip
    assert bpe.eos_id not in bpe.encode(SAMPLE)  # special strings inside text are plain text
    digits = bpe.encode("9876543210")
    assert [bpe.decode([i]) for i in digits] == list("9876543210")
    assert len(bpe.encode("return")) < len("return")  # it did learn merges
    assert set(bpe.specials) == set(SPECIAL_TOKENS) and len(set(bpe.specials.values())) == len(SPECIAL_TOKENS)
    assert bpe.encode_batch(["12 ab", SAMPLE]) == [bpe.encode("12 ab"), bpe.encode(SAMPLE)]


def test_save_load_keeps_ids_and_hash(bpe, byte_tok, tmp_path):
    for tok, sub in ((bpe, "bpe"), (byte_tok, "byte")):
        loaded = load_tokenizer(tok.save(tmp_path / sub))
        assert type(loaded) is type(tok) and loaded.hash == tok.hash
        assert loaded.encode(SAMPLE) == tok.encode(SAMPLE) and loaded.specials == tok.specials
    other = build_tokenizer("bpe", texts=TEXTS[:3], vocab_size=300)
    assert len({bpe.hash, byte_tok.hash, other.hash}) == 3


def test_the_byte_tokenizers_hash_is_pinned_and_covers_its_special_ids(byte_tok):
    """Checkpoints, shards and runs record this hash: a change of what it covers would orphan them all.  The
    special ids are part of it (a hash of the kind and backend alone had passed every test): other ids, other
    tokenizer."""
    assert byte_tok.hash == "a6462ddd1ea1c2c6d3cd4f0adbdab823e63ffb0f8bc541ff1922b85fad3ac4fa"
    swapped = ByteTokenizer()
    swapped.specials = {**swapped.specials, "pad": byte_tok.eos_id, "eos": byte_tok.pad_id}
    assert swapped.encode(SAMPLE) == byte_tok.encode(SAMPLE) and swapped.hash != byte_tok.hash


def test_edited_tokenizer_is_rejected(bpe, tmp_path):
    bpe.save(tmp_path)
    data = json.loads((tmp_path / BPE_FILE).read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # swap two ids: a different mapping
    (tmp_path / BPE_FILE).write_text(json.dumps(data))
    with pytest.raises(MemlabError, match="does not match its recorded hash"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda d: (d / META_FILE).write_text("XXXXX not json"), "tokenizer.memlab.json is corrupt \\(not JSON"),
        (lambda d: (d / META_FILE).write_text("[1, 2]"), "tokenizer.memlab.json is corrupt \\(not a JSON object"),
        (lambda d: (d / BPE_FILE).write_text("XXXXX not json"), "corrupt tokenizer file .*tokenizer.json"),
        (lambda d: (d / BPE_FILE).unlink(), "tokenizer.json is missing"),
    ],
)
def test_a_damaged_saved_tokenizer_is_one_clear_error(bpe, tmp_path, damage, fragment):
    """A garbled file of the same size passes a checkpoint's size check: it had raised JSONDecodeError or
    the `tokenizers` library's bare Exception."""
    bpe.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(MemlabError, match=fragment):
        load_tokenizer(tmp_path)


def test_check_tokenizer(bpe, byte_tok):
    check_tokenizer(bpe.hash, bpe, "x")
    with pytest.raises(MemlabError, match="made with tokenizer"):
        check_tokenizer(bpe.hash, byte_tok, "the data")


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: build_tokenizer("bpe"), "trained on a corpus"),
        (lambda: build_tokenizer("bpe", texts=TEXTS, vocab_size=100), "too small"),
        (lambda: build_tokenizer("bpe", texts=[], vocab_size=300), "empty corpus"),
        (lambda: load_tokenizer("bpe"), "saved one"),
        (lambda: build_tokenizer("no-such-org/no-such-tokenizer"), "no-such-org/no-such-tokenizer"),
    ],
)
def test_bad_tokenizer_specs(call, fragment):
    with pytest.raises(MemlabError, match=fragment):
        call()


def test_directory_without_tokenizer(tmp_path):
    with pytest.raises(MemlabError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)


def test_local_hugging_face_tokenizer(bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RawTokenizer

    bpe.save(tmp_path / "raw")
    raw = RawTokenizer.from_file(str(tmp_path / "raw" / BPE_FILE))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|eos|>")
    hf.save_pretrained(tmp_path / "hf")

    tok = load_tokenizer(tmp_path / "hf")  # a local path given as the spec
    assert isinstance(tok, HFTokenizer)
    assert tok.encode(SAMPLE) == bpe.encode(SAMPLE) and tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.eos_id == bpe.eos_id and tok.sep_id == bpe.sep_id
    assert tok.encode_batch([SAMPLE, "1 2"]) == [bpe.encode(SAMPLE), bpe.encode("1 2")]
    again = load_tokenizer(tok.save(tmp_path / "saved"))
    assert isinstance(again, HFTokenizer) and again.hash == tok.hash and again.specials == tok.specials
