"""Tokenizers: round trips, digits one per token, specials, hashes, save/load, local HF tokenizers."""

from __future__ import annotations

import json

import pytest
from local_tokenizers import metaspace_tokenizer

from memlab.data.tokenizer import (
    BPE_FILE,
    MAX_PIECE_CHARS,
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


def test_byte_decode_renders_every_special_and_drops_ids_past_the_vocabulary(byte_tok):
    """The pad id (256) is the first past the bytes; a model wider than its tokenizer can emit ids it lacks."""
    assert [byte_tok.decode([i]) for i in byte_tok.specials.values()] == list(SPECIAL_TOKENS.values())
    assert byte_tok.decode([*b"ok", byte_tok.vocab_size, *b"!"]) == "ok!"


def test_bpe_round_trip_vocab_and_digits(bpe):
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size <= 320
    assert bpe.decode(bpe.encode(SAMPLE)) == SAMPLE  # byte-level: unseen characters still round-trip
    assert bpe.eos_id not in bpe.encode(SAMPLE)  # special strings inside text are plain text
    digits = bpe.encode("9876543210")
    assert [bpe.decode([i]) for i in digits] == list("9876543210")
    assert len(bpe.encode("return")) < len("return")  # it did learn merges
    assert set(bpe.specials) == set(SPECIAL_TOKENS) and len(set(bpe.specials.values())) == len(SPECIAL_TOKENS)
    assert bpe.encode_batch(["12 ab", SAMPLE]) == [bpe.encode("12 ab"), bpe.encode(SAMPLE)]
    assert bpe.decode([*bpe.encode("ab"), bpe.eos_id]) == "ab<|eos|>"  # special ids render as their strings


def test_bpe_splits_digits_even_when_its_corpus_is_all_numbers():
    numbers = build_tokenizer("bpe", texts=["12345 67890 " * 50] * 5, vocab_size=300)
    assert [numbers.decode([i]) for i in numbers.encode("1234567890")] == list("1234567890")


def test_bpe_learns_no_piece_longer_than_its_cap_from_a_long_run_without_spaces():
    """A minified line or a base64 blob had been one piece, whose training time grows with its square."""
    blob = "".join("abcdefgh"[(i * i + 3 * i) % 7] for i in range(4 * MAX_PIECE_CHARS + 5))
    tok = build_tokenizer("bpe", texts=[blob] * 3, vocab_size=400)
    pieces = tok._tok.pre_tokenizer.pre_tokenize_str(blob + " and more")
    assert max(len(piece) for piece, _ in pieces) == MAX_PIECE_CHARS
    assert "".join(piece for piece, _ in pieces) == blob + "Ġand" + "Ġmore"  # nothing lost or reordered
    assert tok.decode(tok.encode(blob)) == blob


def test_bpe_offsets_are_the_character_span_of_each_id(bpe):
    text = "x = 90210 + foo(<|eos|>)  # 3.14"
    ids, offsets = bpe.encode_with_offsets(text)
    assert ids == bpe.encode(text)
    assert [text[s:e] for s, e in offsets] == [bpe.decode([i]) for i in ids]  # ASCII: one character per byte


def test_save_load_keeps_ids_and_hash(bpe, byte_tok, tmp_path):
    for tok, sub in ((bpe, "bpe"), (byte_tok, "byte")):
        loaded = load_tokenizer(tok.save(tmp_path / "new" / sub))  # missing parents are created
        meta = json.loads((tmp_path / "new" / sub / META_FILE).read_text())
        assert meta == {"kind": tok.kind, "hash": tok.hash, "vocab_size": tok.vocab_size, "specials": tok.specials}
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
        (lambda d: (d / META_FILE).write_text(json.dumps({"kind": "spm"})), "unknown tokenizer kind 'spm'"),
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
        (lambda: build_tokenizer("bpe", texts=TEXTS, vocab_size=260), "needs at least 261"),  # bytes + specials
        (lambda: build_tokenizer(""), "empty tokenizer spec"),
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
    assert tok.encode_with_offsets(SAMPLE) == bpe.encode_with_offsets(SAMPLE)  # "<|eos|>" stays plain text here too
    again = load_tokenizer(tok.save(tmp_path / "saved"))
    assert isinstance(again, HFTokenizer) and again.hash == tok.hash and again.specials == tok.specials


def word_level(transformers, lowercase: bool = False):
    """A Hugging Face tokenizer of three words, with its own end of text "</s>" (that its post-processor
    appends) and none of memlab's special tokens."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, processors

    raw = RawTokenizer(models.WordLevel({"[UNK]": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    if lowercase:
        raw.normalizer = normalizers.Lowercase()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="</s>")


def test_a_hugging_face_tokenizer_keeps_its_end_of_text_and_gains_memlabs_other_specials():
    transformers = pytest.importorskip("transformers")
    tok = HFTokenizer(word_level(transformers), "words")
    assert tok.eos_id == 1 and tok.decode([tok.eos_id]) == "</s>"
    added = ("pad", "bos", "sep", "query")
    assert [tok.decode([tok.specials[k]]) for k in added] == [SPECIAL_TOKENS[k] for k in added]
    assert tok.vocab_size == 4 + len(added) and len(set(tok.specials.values())) == len(SPECIAL_TOKENS)
    assert tok.encode("a b") == [2, 3] and tok.encode_batch(["a b", "b"]) == [[2, 3], [3]]  # no "</s>" appended
    assert tok.encode_with_offsets("a b") == ([2, 3], [(0, 1), (2, 3)])


def test_a_hugging_face_tokenizers_hash_covers_more_than_its_vocabulary():
    """Equal hash == same ids: a lowercasing tokenizer of the same words encodes "A" otherwise."""
    transformers = pytest.importorskip("transformers")
    plain, lower = (HFTokenizer(word_level(transformers, lowercase), "words") for lowercase in (False, True))
    assert plain.encode("A") != lower.encode("A") and plain.hash != lower.hash


def test_a_hugging_face_tokenizer_is_only_looked_up_locally(monkeypatch):
    transformers = pytest.importorskip("transformers")
    calls = []

    def not_cached(name, **kwargs):
        calls.append(kwargs)
        raise OSError(f"{name} is not cached")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", not_cached)
    with pytest.raises(MemlabError, match="`hf download org/name`"):
        build_tokenizer("org/name")
    assert calls == [{"local_files_only": True}]  # never a download


def test_a_directory_transformers_cannot_load_is_one_clear_error(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "tokenizer_config.json").write_text("{}")  # no vocabulary: transformers raises a ValueError
    with pytest.raises(MemlabError, match="is not available locally"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["byte", "bpe", "metaspace"])
def test_a_continuation_decodes_as_it_reads_after_its_prefix(kind, bpe):
    """SentencePiece-style ids decoded alone drop the meta-space that separates them from the prefix."""
    tok = {"byte": build_tokenizer("byte"), "bpe": bpe, "metaspace": metaspace_tokenizer(SAMPLE)}[kind]
    prefix, whole = tok.encode("the key is"), tok.encode("the key is k7 and")
    assert whole[: len(prefix)] == prefix
    assert tok.decode_continuation(prefix, whole[len(prefix) :]) == " k7 and"
    assert tok.decode_continuation(prefix, []) == ""
