"""Probe text: documents of a corpus, tokenised, with a label for every token, cut into windows.

A token's labels are those of its first non-space character, found through the character
span of the token: the offsets a `tokenizers` backend reports (which also serve tokenizers whose
single ids do not decode to their text, such as SentencePiece's "▁" meta-space), else each id
decoded on its own (ids that only decode together, such as the bytes of one UTF-8 character,
share a span), the pieces joining back into the document.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from memlab.data.sources import open_source
from memlab.data.text import is_validation
from memlab.data.tokenizer import Tokenizer
from memlab.errors import MemlabError
from memlab.probes.labels import char_labels

log = logging.getLogger(__name__)
LISTS_SOURCE = "lists"  # built-in: synthetic structured lists (bullets, numbers, key: value)


@dataclass
class ProbeText:
    """Token windows of a corpus and the labels of each token (arrays aligned with the windows)."""

    windows: list[np.ndarray] = field(default_factory=list)  # int64 token ids, each <= seq_len long
    indent: list[np.ndarray] = field(default_factory=list)  # int16 per token, -1 outside Python
    bracket: list[np.ndarray] = field(default_factory=list)
    role: list[np.ndarray] = field(default_factory=list)  # int16 index into labels.ROLES
    documents: int = 0
    skipped_documents: int = 0  # could not be aligned to characters

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)

    def flat(self, name: str) -> np.ndarray:
        """One label (or ``ids``) over all tokens, in window order."""
        arrays = self.windows if name == "ids" else getattr(self, name)
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def read_probe_text(
    spec: str,
    tokenizer: Tokenizer,
    max_tokens: int,
    seq_len: int,
    documents: str = "val",
    val_fraction: float = 0.01,
    split_seed: int = 0,
    text_field: str | None = None,
) -> ProbeText:
    """Up to ``max_tokens`` labelled tokens of corpus ``spec`` in windows of at most ``seq_len``.

    ``documents="val"`` keeps only the documents of the validation split that a run made with
    ``val_fraction`` / ``split_seed`` held out; ``"all"`` takes every document in order.
    ``text_field`` names the field of a files:/hf: source's rows that holds the text.
    """
    if documents not in ("val", "all"):
        raise MemlabError(f"unknown document selection {documents!r}; valid choices: all, val")
    if max_tokens < 1:
        raise MemlabError(f"max_tokens must be positive, got {max_tokens}")
    out = ProbeText()
    for text in _documents(spec, documents, val_fraction, split_seed, text_field):
        ids, spans = encode_spans(tokenizer, text)
        if spans is None:
            out.skipped_documents += 1
            continue
        keep = max_tokens - out.tokens
        _add_document(out, text, np.asarray(ids[:keep], dtype=np.int64), spans[:keep], seq_len)
        if out.tokens >= max_tokens:
            break
    if out.tokens == 0:
        raise MemlabError(
            f"corpus {spec!r} gave no probe text ({documents} documents"
            + (f" of val_fraction={val_fraction}" if documents == "val" else "")
            + "); try --documents all"
        )
    return out


def _documents(
    spec: str, documents: str, val_fraction: float, split_seed: int, text_field: str | None
) -> Iterator[str]:
    if spec == LISTS_SOURCE:  # never trained on: no split needed
        yield from structured_lists()
        return
    for doc in open_source(spec, text_field=text_field).keyed_documents():
        if doc.text.strip() and (documents == "all" or is_validation(doc.split_key, val_fraction, split_seed)):
            yield doc.text


def encode_spans(tokenizer: Tokenizer, text: str) -> tuple[list[int], np.ndarray | None]:
    """The ids of ``text`` and their (n_tokens, 2) character [start, end): the tokenizer's offsets
    where it reports them, else by decoding (see ``token_spans``); None for spans that do not fit."""
    encoded = tokenizer.encode_with_offsets(text)
    if encoded is None:
        ids = tokenizer.encode(text)
        return ids, token_spans(tokenizer, text, ids)
    ids, offsets = encoded
    spans = np.asarray(offsets, dtype=np.int64).reshape(len(ids), 2)  # (n_tokens, 2)
    fits = (spans[:, 0] <= spans[:, 1]).all() and (np.diff(spans[:, 0]) >= 0).all()
    return ids, spans if fits and (spans >= 0).all() and (spans <= len(text)).all() else None


def token_spans(tokenizer: Tokenizer, text: str, ids: list[int]) -> np.ndarray | None:
    """(n_tokens, 2) character [start, end) of every token, or None if the ids do not decode to ``text``."""
    spans = np.zeros((len(ids), 2), dtype=np.int64)
    cache: dict[int, str] = {}
    pos, i = 0, 0
    while i < len(ids):
        j, piece = i + 1, cache.get(ids[i])
        if piece is None:
            piece = cache[ids[i]] = tokenizer.decode([ids[i]])
        while _ends_in_a_split_character(tokenizer, text, pos, piece, ids, i, j):
            j += 1  # the next id completes the character: it joins this span
            piece = tokenizer.decode(ids[i:j])
        if not text.startswith(piece, pos):
            return None
        spans[i:j] = (pos, pos + len(piece))
        pos, i = pos + len(piece), j
    return spans if pos == len(text) else None


def _ends_in_a_split_character(
    tokenizer: Tokenizer, text: str, pos: int, piece: str, ids: list[int], i: int, j: int
) -> bool:
    """Whether ``piece`` (``ids[i:j]`` decoded, at ``pos`` of ``text``) ends in part of a character: it
    holds U+FFFD and does not match the text, or the next id adds nothing to it (a literal U+FFFD of
    the text matches and is followed).  At most 8 ids make one character."""
    if "\ufffd" not in piece or j >= len(ids) or j - i >= 8:
        return False
    return not text.startswith(piece, pos) or len(tokenizer.decode(ids[i : j + 1])) <= len(piece)


def _add_document(out: ProbeText, text: str, ids: np.ndarray, spans: np.ndarray, seq_len: int) -> None:
    labels = char_labels(text)
    # the first non-space character of each token (the token start if it is all space)
    nonspace = np.array([not c.isspace() for c in text] + [True])
    next_nonspace = np.minimum.accumulate(np.where(nonspace, np.arange(len(text) + 1), len(text))[::-1])[::-1]
    first = next_nonspace[spans[:, 0]]
    first = np.where(first < spans[:, 1], first, spans[:, 0]).clip(max=max(len(text) - 1, 0))
    for start in range(0, len(ids), seq_len):
        part = slice(start, start + seq_len)
        out.windows.append(ids[part])
        out.indent.append(labels.indent[first[part]])
        out.bracket.append(labels.bracket[first[part]])
        out.role.append(labels.role[first[part]])
    out.documents += 1


def structured_lists(n_documents: int = 2000, seed: int = 0) -> Iterator[str]:
    """Synthetic structured lists: bulleted, numbered and ``key: value`` lists of words and numbers."""
    rng = random.Random(seed)
    words = "alpha beta config name value path size count mode level port host user item color weight".split()
    for _ in range(n_documents):
        style, lines = rng.choice(("bullet", "numbered", "keyvalue")), []
        for i in range(rng.randint(4, 12)):
            key, value = rng.choice(words), rng.choice([str(rng.randint(0, 999)), rng.choice(words)])
            line = {"bullet": f"- {key} {value}", "numbered": f"{i + 1}. {key}", "keyvalue": f"{key}: {value}"}
            lines.append(line[style])
        yield "\n".join(lines) + "\n"
