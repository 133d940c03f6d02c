"""Real text for language modelling: corpus sources turned once into token shards.

::

    from memlab.data.text import prepare_shards, TokenShards
    result = prepare_shards("stdlib-code", "bpe", "data/stdlib", vocab_size=8192)
    train = TokenShards("data/stdlib", "train", tokenizer=result.tokenizer)
    batch = train.random_windows(16, 256, np.random.default_rng(0))      # (16, 257)

Each document goes to the validation split when a keyed hash of its split key (its text, or for a
stdlib-docs docstring the text of its source file) falls below ``val_fraction``: the split of a
document never depends on the order or presence of the others.
Documents are followed by EOS.  Re-running with the same request (source fingerprint, tokenizer,
options) reuses the existing shards after checking their sizes and checksums; ``force`` rebuilds.
One preparation of a directory runs at a time (a lock file ``.<name>.lock`` beside it): another
process asking for the same shards waits, then reuses them.
The ``bpe`` tokenizer is trained on the training split (its first documents, until they hold
``bpe_train_bytes`` characters: the last may run past it) and saved next to the shards, so
``load_tokenizer(out_dir)`` returns the tokenizer the ids belong to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from memlab.data.shards import (
    FORMAT,
    HEADER_FILE,
    MIN_DOCUMENTS,
    SPLITS,
    ShardWriter,
    TokenShards,
    read_header,
    token_dtype,
    verify_split,
)
from memlab.data.sources import Document, Files, Source, open_source
from memlab.data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from memlab.errors import MemlabError, check_dir_target
from memlab.jsonfile import write_text
from memlab.locks import LockHeld, lock_beside
from memlab.paths import holds_training_output, is_model_dir
from memlab.staging import remove_abandoned, staged_directory

__all__ = ["PrepareResult", "TokenShards", "data_request", "is_validation", "open_source", "prepare_shards"]
log = logging.getLogger(__name__)
BATCH_BYTES = 4 << 20  # documents are tokenised in batches of about this much text
# (evaluation prepares a run's own split, which it cannot widen: the advice names where it is chosen)
MORE_HELD_OUT = "a larger --val-fraction (of memlab train or data prepare) or a larger corpus holds out more"


@dataclass
class PrepareResult:
    directory: Path
    header: dict
    tokenizer: Tokenizer
    reused: bool
    seconds: float

    @property
    def text_bytes(self) -> int:
        return self.header["text_bytes"]

    @property
    def mb_per_s(self) -> float:
        """Text megabytes (10^6 bytes of UTF-8) tokenised and written per second of this call."""
        return self.text_bytes / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """A few human-readable lines on what was prepared (or reused) and how fast."""
        h, tok = self.header, self.tokenizer
        lines = [
            f"{'reused' if self.reused else 'prepared'} {h['source']} -> {self.directory}",
            f"  tokenizer: {tok.kind}, {tok.vocab_size} ids, hash {tok.hash[:12]}, shards of {h['dtype']}",
        ]
        for name, split in h["splits"].items():
            lines.append(
                f"  {name + ':':<6} {split['documents']:,} documents, {split['tokens']:,} tokens "
                f"in {len(split['shards'])} shard file(s)"
            )
        if self.reused:
            lines.append(f"  up to date (sizes and checksums verified in {self.seconds:.1f} s); --force rebuilds")
        else:
            lines.append(
                f"  throughput: {self.mb_per_s:.2f} MB/s ({self.text_bytes / 1e6:.1f} MB of text in "
                f"{self.seconds:.1f} s, tokenizer training included)"
            )
        return "\n".join(lines)


def is_validation(split_key: str, val_fraction: float, split_seed: int = 0) -> bool:
    """Whether a document belongs to the validation split: a keyed hash of its split key (see
    ``Source.keyed_documents``), not its position."""
    digest = hashlib.blake2b(split_key.encode("utf-8", errors="replace"), digest_size=8, key=str(split_seed).encode())
    return int.from_bytes(digest.digest(), "big") / 2**64 < val_fraction


def _documents(source: Source, max_docs: int | None) -> Iterator[Document]:
    docs = (d for d in source.keyed_documents() if d.text.strip())
    return islice(docs, max_docs) if max_docs is not None else docs


def bpe_training_text(source: Source, max_docs, val_fraction, split_seed, budget: int) -> Iterator[str]:
    """The documents a BPE of ``source`` learns from: its training split's first, until ``budget`` characters."""
    used = 0
    for doc in _documents(source, max_docs):
        if used >= budget:
            return
        if not is_validation(doc.split_key, val_fraction, split_seed):
            used += len(doc.text)
            yield doc.text


STAGING = "prepare"  # the shards are written in out/.prepare.<host>.<pid>.tmp, then moved in
BPE_VOCAB_SIZE = 8192  # the default vocabulary of a BPE trained on the corpus


def prepare_shards(
    source: str | Source,
    tokenizer: str | Tokenizer,
    out_dir: str | Path,
    *,
    vocab_size: int = BPE_VOCAB_SIZE,
    val_fraction: float = 0.01,
    split_seed: int = 0,
    max_docs: int | None = None,
    bpe_train_bytes: int = 10_000_000,
    shard_tokens: int = 100_000_000,
    force: bool = False,
    progress: bool = False,
) -> PrepareResult:
    """Tokenise ``source`` into train/val shards in ``out_dir`` (or reuse them when up to date).

    ``tokenizer`` is a Tokenizer, ``"byte"``, ``"bpe"`` (trained here with ``vocab_size``), the
    directory of a saved one (a run, checkpoint, export or shard directory) or a local Hugging
    Face name/path.
    """
    t0 = time.perf_counter()
    if not 0 <= val_fraction < 1:
        raise MemlabError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_docs is not None and max_docs < 1:
        raise MemlabError(f"max_docs must be positive, got {max_docs}")
    if shard_tokens < 1:  # (0 had closed empty shards for ever)
        raise MemlabError(f"shard_tokens must be positive, got {shard_tokens}")
    if tokenizer == "bpe" and bpe_train_bytes < 1:
        raise MemlabError(f"bpe_train_bytes must be positive (the text the BPE learns from), got {bpe_train_bytes}")
    out = Path(out_dir)
    check_dir_target(out, "the shard directory")
    if out.is_dir() and holds_training_output(out):  # its tokenizer would be replaced
        raise MemlabError(f"{out} holds a training run or checkpoints; prepare the shards in another directory")
    if out.is_dir() and (is_model_dir(out) or (out / "config.json").is_file()):  # an export: the same
        raise MemlabError(f"{out} holds a model (its weights or config.json); prepare the shards in another directory")
    src = open_source(source) if isinstance(source, str) else source
    if isinstance(src, Files) and any(path.resolve().is_relative_to(out.resolve()) for path in src.paths()):
        raise MemlabError(f"{src.spec} reads files in {out}, where the shards go (the next run would read the shards "
                          "as text); prepare them in another directory")
    if tokenizer != "bpe":
        tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    request = data_request(src, tokenizer, vocab_size, val_fraction, split_seed, max_docs, bpe_train_bytes)
    if out.is_dir():  # (a preparation killed after another had prepared these shards had left its staging)
        remove_abandoned(out / STAGING)
    if not force and (reused := _reuse(out, request)) is not None:
        return PrepareResult(out, reused[0], reused[1], True, time.perf_counter() - t0)
    with _preparation_lock(out) as waited:
        if waited and not force and (reused := _reuse(out, request)) is not None:  # the other process's shards
            return PrepareResult(out, reused[0], reused[1], True, time.perf_counter() - t0)

        if tokenizer == "bpe":
            texts = bpe_training_text(src, max_docs, val_fraction, split_seed, bpe_train_bytes)
            tokenizer = build_tokenizer("bpe", texts=texts, vocab_size=vocab_size)
        assert isinstance(tokenizer, Tokenizer)
        header = _write_staged(src, tokenizer, out, request, max_docs, shard_tokens, progress)
        return PrepareResult(out, header, tokenizer, False, time.perf_counter() - t0)


def _write_staged(
    src: Source, tokenizer: Tokenizer, out: Path, request: dict, max_docs, shard_tokens: int, progress: bool
) -> dict:
    """Write the shards, the tokenizer and last the header (which marks completion) into ``out``; the header.

    The shards are written into a staging directory inside ``out`` (the same file system) and moved in
    once whole: a preparation that fails (an empty corpus, a bad document, an interrupt) leaves the
    shards already there intact."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for legacy in out.glob(".prepare-*"):  # an older memlab's staging (we hold the lock: none is at work)
        shutil.rmtree(legacy, ignore_errors=True)
    try:
        with staged_directory(out / STAGING) as staging:
            header = _write_shards(src, tokenizer, staging, request, max_docs, shard_tokens, progress)
            _remove_shards(out)
            for split in header["splits"].values():
                for shard in split["shards"]:
                    os.replace(staging / shard["file"], out / shard["file"])
    finally:
        if created and not any(out.iterdir()):  # a failed first preparation leaves no empty directory
            out.rmdir()
    tokenizer.save(out)
    write_text(out / HEADER_FILE, json.dumps(header, indent=2) + "\n")  # last, whole: it marks the shards done
    return header


@contextmanager
def _preparation_lock(out: Path) -> Iterator[bool]:
    """Hold ``.<name>.lock`` beside ``out`` while preparing it, yielding whether another process held it
    first: a second process preparing the same shards (another run sharing the cache) waits, then reuses
    them (it had removed the first's staging directory as stale).  Without a lock where the parent cannot
    hold the file (read-only, another user's lock)."""
    waited = False
    try:
        lock = lock_beside(out)
    except LockHeld:
        log.info("waiting for another process preparing %s", out)
        lock, waited = lock_beside(out, wait=True), True
    try:
        yield waited
    finally:
        if lock is not None:
            lock.release()


def data_request(
    src: Source,
    tokenizer: str | Tokenizer,
    vocab_size: int = BPE_VOCAB_SIZE,
    val_fraction: float = 0.01,
    split_seed: int = 0,
    max_docs: int | None = None,
    bpe_train_bytes: int = 10_000_000,
) -> dict:
    """What identifies prepared shards (their header's ``request``): the source and its fingerprint,
    the tokenizer (``"bpe"`` by the settings it is trained with, another by its hash) and the split."""
    if tokenizer == "bpe":
        tok_request = {"kind": "bpe", "vocab_size": vocab_size, "train_bytes": bpe_train_bytes}
    else:
        tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        tok_request = {"hash": tokenizer.hash}
    return {
        "source": src.spec,
        "fingerprint": src.fingerprint,
        "tokenizer": tok_request,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "max_docs": max_docs,
    }


def _reuse(out: Path, request: dict) -> tuple[dict, Tokenizer] | None:
    if not (out / HEADER_FILE).is_file():
        return None
    try:
        header = read_header(out)
        if header.get("request") != request:
            log.info("%s is out of date for this request; rebuilding", out)
            return None
        for split in header["splits"]:
            verify_split(out, header, split)
        tokenizer = load_tokenizer(out)
    except MemlabError as e:
        log.warning("rebuilding %s: %s", out, e)
        return None
    if tokenizer.hash != header["tokenizer_hash"]:
        log.warning("rebuilding %s: its saved tokenizer does not match its shards", out)
        return None
    return header, tokenizer


def _remove_shards(out: Path) -> None:
    """Delete the header and the shard files of a prepared directory (nothing else in it)."""
    for old in [out / HEADER_FILE, *(p for s in SPLITS for p in out.glob(f"{s}_[0-9][0-9][0-9].bin*"))]:
        old.unlink(missing_ok=True)


def _batches(docs: Iterable[Document]) -> Iterator[list[Document]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_shards(
    src: Source, tokenizer: Tokenizer, out: Path, request: dict, max_docs, shard_tokens: int, progress: bool
) -> dict:
    from tqdm.auto import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: ShardWriter(out, s, dtype, shard_tokens) for s in SPLITS}
    eos = np.array([tokenizer.eos_id], dtype=np.int64)
    text_bytes = 0
    # closed on the way out of an error too: its last refresh must not follow the error message
    with tqdm(desc=f"tokenising {src.spec}", unit="B", unit_scale=True, disable=not progress) as bar:
        for batch in _batches(_documents(src, max_docs)):
            texts = [doc.text for doc in batch]
            for doc, ids in zip(batch, tokenizer.encode_batch(texts)):
                held_out = is_validation(doc.split_key, request["val_fraction"], request["split_seed"])
                split = "val" if held_out else "train"
                writers[split].write(np.concatenate([np.asarray(ids, dtype=np.int64), eos]))
                writers[split].documents += 1
            n = sum(len(t.encode("utf-8", errors="replace")) for t in texts)
            text_bytes += n
            bar.update(n)
    splits = {s: w.finish() for s, w in writers.items()}
    if not any(s["documents"] for s in splits.values()):
        _remove_shards(out)
        raise MemlabError(f"source {src.spec} yielded no documents (empty corpus)")
    held_out = splits["val"]["documents"]
    if request["val_fraction"] > 0 and not held_out:
        log.warning("no document of %s fell into the validation split; %s", src.spec, MORE_HELD_OUT)
    elif request["val_fraction"] > 0 and held_out < MIN_DOCUMENTS:
        log.warning("only %d document(s) of %s fell into the validation split: a perplexity interval resamples "
                    "documents and needs %d; %s", held_out, src.spec, MIN_DOCUMENTS, MORE_HELD_OUT)
    return {
        "format": FORMAT,
        "source": src.spec,
        "tokenizer_hash": tokenizer.hash,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "dtype": dtype.name,
        "text_bytes": text_bytes,
        "request": request,
        "splits": splits,
    }
