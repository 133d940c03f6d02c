"""Tokenizers: byte, byte-level BPE (trained with `tokenizers`) and local Hugging Face tokenizers.

Every tokenizer has the same surface::

    tok = build_tokenizer("bpe", texts=documents, vocab_size=8192)   # or "byte", or "gpt2"
    ids = tok.encode("x = 12")          # list[int]; special-token strings in text stay plain text
    tok.encode_with_offsets("x = 12")   # (ids, [(start, end) character span of each id]); None if
                                        # the backend has no offsets (the byte tokenizer)
    tok.decode(ids)                     # str; special ids render as their strings ("<|eos|>")
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.sep_id, tok.query_id
    tok.hash                            # sha256 of the canonical serialisation: equal hash == same ids
    tok.save(run_dir); load_tokenizer(run_dir)

Special tokens: ``<|pad|> <|bos|> <|eos|>`` and two task markers: ``<|sep|>`` (the answer
follows) and ``<|query|>`` (the question after a retrieval haystack).  The BPE splits digits one
per token so that arithmetic is learnable, and cuts a run of non-space characters into pieces of
at most 64 (a minified line had made training quadratic).  A saved tokenizer is
``tokenizer.memlab.json`` (kind, hash, specials) plus the backend's files; loading re-computes the
hash and rejects a mismatch.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

from memlab.errors import MemlabError
from memlab.jsonfile import read_json_object

META_FILE = "tokenizer.memlab.json"
BPE_FILE = "tokenizer.json"  # the `tokenizers` format (also loadable by transformers)
HF_DIR = "hf_tokenizer"
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<|pad|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "sep": "<|sep|>",
    "query": "<|query|>",
}
KINDS = ("byte", "bpe", "a Hugging Face tokenizer name or local path")
# a run of non-space characters is cut into pieces of at most this many before BPE sees it: training
# time grows with the square of a piece's length (80 kB without a space: 5.35 s, now 0.17 s; see
# benchmarks/RESULTS.md).  Shards prepared before keep the tokenizer they were prepared with.
MAX_PIECE_CHARS = 64


class Tokenizer(ABC):
    """Text <-> token ids, with the special ids memlab's data pipeline relies on."""

    kind: str
    specials: dict[str, int]  # name in SPECIAL_TOKENS -> id

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def _backend(self) -> str:
        """A canonical string of everything that fixes the mapping text -> ids."""

    @abstractmethod
    def _save_backend(self, directory: Path) -> None: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode_continuation(self, prefix: Sequence[int], new: Sequence[int]) -> str:
        """The text ``new`` adds after ``prefix``: the two decoded together, the prefix's text cut off
        (a SentencePiece-style decoder drops the leading space of ids decoded alone)."""
        whole, head = self.decode([*prefix, *new]), self.decode(prefix)
        return whole[len(head) :] if whole.startswith(head) else self.decode(new)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        """The ids of ``text`` and the character [start, end) each came from, where the backend
        (a `tokenizers` tokenizer) reports them; None where it does not."""
        return None

    @property
    def bos_id(self) -> int:
        return self.specials["bos"]

    @property
    def eos_id(self) -> int:
        return self.specials["eos"]

    @property
    def pad_id(self) -> int:
        return self.specials["pad"]

    @property
    def sep_id(self) -> int:
        return self.specials["sep"]

    @property
    def query_id(self) -> int:
        return self.specials["query"]

    @cached_property
    def hash(self) -> str:
        """sha256 of the kind, the special ids and the backend's serialisation.

        Limitation: for BPE and HF tokenizers the serialisation is the `tokenizers` library's JSON,
        which a new version of that library may write differently for the same tokenizer; a saved
        tokenizer then fails its recorded hash on load.  The hash is kept as it is (a canonical form
        would change every hash that checkpoints, shards and runs have recorded)."""
        canonical = json.dumps(
            {"kind": self.kind, "specials": self.specials, "backend": self._backend()}, sort_keys=True
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer into ``directory`` (created if needed); returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_backend(directory)
        meta = {"kind": self.kind, "hash": self.hash, "vocab_size": self.vocab_size, "specials": self.specials}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, hash={self.hash[:12]})"


# ---------------------------------------------------------------------------- byte


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0..255; the special tokens follow."""

    kind = "byte"

    def __init__(self) -> None:
        self.specials = {name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}
        self._special_text = {i: SPECIAL_TOKENS[name] for name, i in self.specials.items()}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(self._special_text.get(i, ""))
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def _backend(self) -> str:
        return "utf-8 bytes"

    def _save_backend(self, directory: Path) -> None:
        pass


# ----------------------------------------------------------------------------- BPE


class BPETokenizer(Tokenizer):
    """A byte-level BPE from the `tokenizers` library (digits one per token)."""

    kind = "bpe"

    def __init__(self, backend) -> None:  # backend: tokenizers.Tokenizer
        self._tok = backend
        self._tok.encode_special_tokens = True  # "<|eos|>" inside a document is plain text
        ids = {name: backend.token_to_id(text) for name, text in SPECIAL_TOKENS.items()}
        missing = [SPECIAL_TOKENS[n] for n, i in ids.items() if i is None]
        if missing:
            raise MemlabError(f"BPE tokenizer lacks the special tokens {missing}; rebuild it with memlab")
        self.specials = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTok

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
            raise MemlabError(
                f"BPE vocab_size={vocab_size} is too small: it needs at least "
                f"{len(alphabet) + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(rf"\S{{{MAX_PIECE_CHARS}}}"), "isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS.values()),
            initial_alphabet=alphabet,
            show_progress=False,
        )
        n_texts = 0

        def counted():
            nonlocal n_texts
            for text in texts:
                n_texts += 1
                yield text

        tok.train_from_iterator(counted(), trainer=trainer)
        if n_texts == 0:
            raise MemlabError("cannot train a BPE tokenizer on an empty corpus")
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def _backend(self) -> str:
        return self._tok.to_str()

    def _save_backend(self, directory: Path) -> None:
        (directory / BPE_FILE).write_text(self._tok.to_str(), encoding="utf-8")  # (Windows' cp1252 lacks Ġ)

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTok

        path = directory / BPE_FILE
        if not path.is_file():
            raise MemlabError(f"{path} is missing: the BPE tokenizer of {directory} is incomplete")
        try:
            backend = HFTok.from_file(str(path))
        except Exception as e:  # `tokenizers` raises a bare Exception for a file it cannot parse
            raise MemlabError(f"corrupt tokenizer file {path}: {str(e).splitlines()[0]}") from None
        return cls(backend)


# ------------------------------------------------------------------ Hugging Face


class HFTokenizer(Tokenizer):
    """A `transformers` tokenizer found locally; memlab's missing special tokens are added to it."""

    kind = "hf"

    def __init__(self, hf_tokenizer, name: str) -> None:
        self._tok, self.name = hf_tokenizer, name
        present = {
            "pad": hf_tokenizer.pad_token,
            "bos": hf_tokenizer.bos_token,
            "eos": hf_tokenizer.eos_token,
        }
        add = {f"{k}_token": SPECIAL_TOKENS[k] for k, v in present.items() if v is None}
        markers = [SPECIAL_TOKENS["sep"], SPECIAL_TOKENS["query"]]
        hf_tokenizer.add_special_tokens({**add, "additional_special_tokens": markers})
        tokens = {k: v or SPECIAL_TOKENS[k] for k, v in present.items()}
        tokens.update(sep=markers[0], query=markers[1])
        self.specials = {k: hf_tokenizer.convert_tokens_to_ids(v) for k, v in tokens.items()}

    @classmethod
    def from_pretrained(cls, name: str) -> HFTokenizer:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise MemlabError(
                f"tokenizer {name!r} needs `transformers`: pip install 'memlab[hf]' (or use --tokenizer bpe / byte)"
            ) from None
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as e:
            raise MemlabError(
                f"tokenizer {name!r} is not available locally ({type(e).__name__}); download it once with "
                f"`hf download {name}` or pass a local directory holding its files; valid kinds: {', '.join(KINDS)}"
            ) from None
        return cls(tok, name)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out = self._tok(list(texts), add_special_tokens=False, split_special_tokens=True)
        return out["input_ids"]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        if not getattr(self._tok, "is_fast", False):  # a slow (pure Python) tokenizer has no offsets
            return None
        out = self._tok(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        return out["input_ids"], [tuple(o) for o in out["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def _backend(self) -> str:
        backend = getattr(self._tok, "backend_tokenizer", None)
        if backend is not None:
            return backend.to_str()
        return json.dumps(sorted(self._tok.get_vocab().items()))

    def _save_backend(self, directory: Path) -> None:
        self._tok.save_pretrained(str(directory / HF_DIR))


# ------------------------------------------------------------------ entry points


def build_tokenizer(spec: str, texts: Iterable[str] | None = None, vocab_size: int = 8192) -> Tokenizer:
    """``byte``; ``bpe`` trained on ``texts`` with ``vocab_size`` ids; or a local HF name/path."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        if texts is None:
            raise MemlabError("a bpe tokenizer is trained on a corpus: pass texts=...")
        return BPETokenizer.train(texts, vocab_size)
    if not spec:
        raise MemlabError(f"empty tokenizer spec; valid kinds: {', '.join(KINDS)}")
    if Path(spec).is_file():  # (it had been "not available locally; download it once with hf download FILE")
        raise MemlabError(f"tokenizer {spec} is a file; give a directory that holds a tokenizer (a run's, an "
                          "export's or a Hugging Face tokenizer's), byte or bpe")
    return HFTokenizer.from_pretrained(spec)


def load_tokenizer(dir_or_spec: str | Path) -> Tokenizer:
    """A tokenizer saved in a directory (a run, checkpoint or data directory), or ``byte``/an HF name."""
    path = Path(dir_or_spec)
    meta_file = path / META_FILE
    if meta_file.is_file():
        return _load_saved(path, read_json_object(meta_file))
    if str(dir_or_spec) == "bpe":
        raise MemlabError("'bpe' names a tokenizer to train; give the directory of a saved one instead")
    if path.is_dir() and not (path / "tokenizer_config.json").is_file():
        raise MemlabError(f"{path} holds no tokenizer ({META_FILE} or a Hugging Face tokenizer_config.json)")
    return build_tokenizer(str(dir_or_spec))


def _load_saved(directory: Path, meta: dict) -> Tokenizer:
    kind = meta.get("kind")
    if kind == "byte":
        tok: Tokenizer = ByteTokenizer()
    elif kind == "bpe":
        tok = BPETokenizer.load(directory)
    elif kind == "hf":
        tok = HFTokenizer.from_pretrained(str(directory / HF_DIR))
    else:
        raise MemlabError(f"{directory / META_FILE} has unknown tokenizer kind {kind!r}; valid: byte, bpe, hf")
    if tok.hash != meta.get("hash"):
        raise MemlabError(f"the tokenizer in {directory} does not match its recorded hash (corrupt or edited)")
    return tok


def check_tokenizer(expected_hash: str, tokenizer: Tokenizer, what: str) -> None:
    """Raise a MemlabError unless ``tokenizer`` is the one (by hash) that ``what`` was made with."""
    if expected_hash != tokenizer.hash:
        raise MemlabError(
            f"{what} was made with tokenizer {expected_hash[:12]} but the tokenizer given is "
            f"{tokenizer.hash[:12]}; use the tokenizer saved with it (load_tokenizer on its directory)"
        )
