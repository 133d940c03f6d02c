"""Token shards on disk: flat binary files of token ids, memory-mapped, plus one JSON header.

A prepared directory holds::

    shards.json            header: format, tokenizer hash, dtype, source, and per split the
                           documents, tokens and shard files with their sha256 checksums
    train_000.bin ...      uint16 (vocabularies <= 65536) or uint32 token ids, documents
    val_000.bin ...        separated by the tokenizer's EOS id
    tokenizer.memlab.json  the tokenizer the ids belong to (see memlab.data.tokenizer)

``TokenShards(dir, split)`` opens one split (checking sizes always and checksums by default;
with ``checksum=`` also that the directory holds the data a run recorded, see ``data_checksum``)
and serves training windows::

    shards.random_windows(batch_size, seq_len, rng)   # (B, T + 1) int64, uniform start offsets
    shards.evaluation_windows(batch_size, seq_len, max_windows)
        # iterator of (starts (b,), windows (b, T + 1)): the split's consecutive windows (each token
        # after the first predicted at most once; the last (N - 1) mod T not scored), or where there
        # are more than max_windows, that many of them spread evenly over the split

With ``rank``/``world_size`` each rank sees a disjoint, contiguous slice of the split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from memlab.data.tokenizer import Tokenizer, check_tokenizer
from memlab.errors import MemlabError
from memlab.jsonfile import read_json_object
from memlab.paths import file_sha256

FORMAT = "memlab-shards-v1"
# The fewest documents of a split that a perplexity interval resamples (memlab.eval.stats); fewer give
# a bootstrap too few distinct resamples to be an interval (two give three: both documents, or either
# one twice, so the "interval" is just the two documents' own losses).
MIN_DOCUMENTS = 5
HEADER_FILE = "shards.json"
SPLITS = ("train", "val")
WINDOW_PLACEMENT = "spread"  # where evaluation windows lie (evaluation_starts); an older memlab read the "prefix"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


HEADER_KEYS = ("source", "tokenizer_hash", "vocab_size", "eos_id", "dtype", "text_bytes", "request", "splits")


def read_header(directory: str | Path) -> dict:
    path = Path(directory) / HEADER_FILE
    if not path.is_file():
        raise MemlabError(f"{directory} holds no prepared data ({HEADER_FILE}); run `memlab data prepare` first")
    header = read_json_object(path, "; prepare the data again")
    if header.get("format") != FORMAT:
        raise MemlabError(f"{path} has format {header.get('format')!r}, expected {FORMAT!r}; prepare the data again")
    missing = [key for key in HEADER_KEYS if key not in header]
    if missing or not isinstance(header["request"], dict) or not isinstance(header["splits"], dict):
        raise MemlabError(f"{path} is corrupt (missing or malformed {', '.join(missing) or 'request/splits'}); "
                          "prepare the data again")
    return header


def verify_split(directory: Path, header: dict, split: str, checksums: bool = True) -> None:
    """Raise a MemlabError if a shard of ``split`` is missing, truncated or (with checksums) altered."""
    itemsize = np.dtype(header["dtype"]).itemsize
    for shard in header["splits"][split]["shards"]:
        path = directory / shard["file"]
        if not path.is_file():
            raise MemlabError(f"shard {path} is missing; prepare the data again")
        if path.stat().st_size != shard["tokens"] * itemsize:
            raise MemlabError(
                f"shard {path} is truncated or corrupt: {path.stat().st_size} bytes, "
                f"expected {shard['tokens'] * itemsize}; prepare the data again"
            )
        if checksums and file_sha256(path) != shard["sha256"]:
            raise MemlabError(f"shard {path} fails its sha256 checksum (corrupt or modified); prepare the data again")


def data_checksum(header: dict) -> str:
    """One sha256 naming the exact token data of a prepared directory: its tokenizer hash and the
    sha256 of every shard of every split (as its header lists them)."""
    shards = {name: [s["sha256"] for s in split["shards"]] for name, split in header["splits"].items()}
    canonical = json.dumps({"tokenizer": header["tokenizer_hash"], "shards": shards}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ShardWriter:
    """Appends token arrays to ``{split}_NNN.bin`` files of at most ``shard_tokens`` ids each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.documents = 0
        self._file = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self._file = (self.directory / (name + ".tmp")).open("wb")
        self._hash, self._count, self._name = hashlib.sha256(), 0, name

    def _close(self) -> None:
        self._file.close()
        os.replace(self.directory / (self._name + ".tmp"), self.directory / self._name)
        self.shards.append({"file": self._name, "tokens": self._count, "sha256": self._hash.hexdigest()})
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        """Append ``tokens`` (N,), splitting across shard files as they fill."""
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._count
            head, tokens = tokens[:room], tokens[room:]
            data = head.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._count += len(head)
            if self._count == self.shard_tokens:
                self._close()

    def finish(self) -> dict:
        if self._file is not None:
            self._close()
        return {"documents": self.documents, "tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}


class TokenShards:
    """One split of a prepared directory, memory-mapped; the windows a trainer and an evaluator read."""

    def __init__(
        self,
        directory: str | Path,
        split: str = "train",
        tokenizer: Tokenizer | None = None,
        verify: bool = True,
        rank: int = 0,
        world_size: int = 1,
        checksum: str | None = None,
    ) -> None:
        """``checksum``: the ``data_checksum`` a run recorded; a MemlabError if the directory now holds other data."""
        self.directory = Path(directory)
        self.header = read_header(self.directory)
        if checksum is not None and (found := data_checksum(self.header)) != checksum:
            raise MemlabError(
                f"{self.directory} no longer holds the data the run recorded (checksum {found[:12]}, recorded "
                f"{checksum[:12]}): it was prepared again with other text or settings"
            )
        if split not in self.header["splits"]:
            raise MemlabError(f"unknown split {split!r}; valid choices: {', '.join(self.header['splits'])}")
        self.vocab_size = None  # with a tokenizer: every window's ids are checked against it
        if tokenizer is not None:
            check_tokenizer(self.header["tokenizer_hash"], tokenizer, f"the data in {self.directory}")
            self.vocab_size = tokenizer.vocab_size
        if not 0 <= rank < world_size:
            raise MemlabError(f"rank {rank} is outside world_size {world_size}")
        verify_split(self.directory, self.header, split, checksums=verify)
        self.split, self.rank, self.world_size = split, rank, world_size
        dtype = np.dtype(self.header["dtype"])
        shards = [s for s in self.header["splits"][split]["shards"] if s["tokens"]]
        self._arrays = [np.memmap(self.directory / s["file"], dtype=dtype, mode="r") for s in shards]
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])  # (n_shards + 1,)
        total = int(self._starts[-1])
        self.lo, self.hi = total * rank // world_size, total * (rank + 1) // world_size  # this rank's slice
        self._eos_positions: np.ndarray | None = None  # (E,) global positions of the split's EOS ids, sorted

    @property
    def num_tokens(self) -> int:
        """Tokens in this rank's slice."""
        return self.hi - self.lo

    @property
    def tokenizer_hash(self) -> str:
        return self.header["tokenizer_hash"]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Global token positions ``[start, stop)`` of the split, read across shard boundaries."""
        pieces = []
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            offset = start - self._starts[i]
            take = min(stop - start, len(self._arrays[i]) - offset)
            pieces.append(self._arrays[i][offset : offset + take])
            start, i = start + take, i + 1
        return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])

    def _need(self, length: int) -> None:
        if self.num_tokens < length:
            raise MemlabError(
                f"the {self.split} split of {self.directory} has {self.num_tokens} tokens"
                f"{f' for rank {self.rank}' if self.world_size > 1 else ''}, "
                f"fewer than one window of {length}; use a shorter seq_len or more data"
            )

    def random_windows(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
        """(B, T + 1) int64 windows at uniform random offsets of this rank's slice."""
        self._need(seq_len + 1)
        starts = rng.integers(self.lo, self.hi - seq_len - 1, size=batch_size, endpoint=True)
        return self._batch([self.tokens(int(s), int(s) + seq_len + 1) for s in starts])

    def _batch(self, rows: list[np.ndarray]) -> torch.Tensor:
        """The rows as one (b, T + 1) int64 tensor; an id outside the tokenizer's (a shard damaged
        without changing its size, which only a checksum sees) is an error, not an embedding crash."""
        batch = np.stack(rows).astype(np.int64)
        if self.vocab_size is not None and batch.max() >= self.vocab_size:
            raise MemlabError(f"the {self.split} shards of {self.directory} hold token id {batch.max()}, outside the "
                              f"tokenizer's {self.vocab_size}: they are damaged; prepare them again")
        return torch.from_numpy(batch)

    def num_sequential_windows(self, seq_len: int) -> int:
        return max(0, (self.num_tokens - 1) // seq_len)

    def evaluation_starts(self, seq_len: int, max_windows: int | None = None) -> np.ndarray:
        """(n,) global start positions of the windows that evaluate this slice: its consecutive
        windows (overlapping by one token), or where there are more than ``max_windows``, that many
        of them spread evenly over the whole slice, one in the middle of each ``1 / max_windows`` of
        it (a prefix would measure its first documents only)."""
        self._need(seq_len + 1)
        n = self.num_sequential_windows(seq_len)
        if max_windows is None or n <= max_windows:
            return self.lo + np.arange(n) * seq_len
        slots = (2 * np.arange(max_windows) + 1) * n // (2 * max_windows)  # the middle slot of each m-th of the slice
        return self.lo + slots * seq_len

    def evaluation_windows(
        self, batch_size: int, seq_len: int, max_windows: int | None = None
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(starts (b,), windows (b, T + 1)) batches of :meth:`evaluation_starts`' windows; b <= B."""
        starts = self.evaluation_starts(seq_len, max_windows)
        for first in range(0, len(starts), batch_size):
            batch = starts[first : first + batch_size]
            yield batch, self._batch([self.tokens(int(s), int(s) + seq_len + 1) for s in batch])

    def documents_before(self, positions: np.ndarray) -> np.ndarray:
        """How many documents of the split (EOS ids) end before each global position: its document's
        index, an EOS counting in the document it ends.  (The first call reads the whole split.)"""
        if self._eos_positions is None:
            eos_id = self.header["eos_id"]
            self._eos_positions = np.concatenate(
                [np.flatnonzero(np.asarray(a) == eos_id) + start for a, start in zip(self._arrays, self._starts)]
            )
        return np.searchsorted(self._eos_positions, positions, side="left")
