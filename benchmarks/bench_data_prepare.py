"""Throughput of ``memlab data prepare`` (MB/s of UTF-8 text) against reading the source alone.

Tokenises a corpus into fresh shards in a temporary directory, for each tokenizer asked for,
and times reading the same documents without tokenising (after one untimed read) as the
reference measured in the same run.  BPE training is timed apart from tokenisation.  Prints JSON.  Reproduce:

    python benchmarks/bench_data_prepare.py --source stdlib-code --tokenizers byte bpe

(``--source 'files:DIR/*.txt'`` of lines without spaces times BPE training on minified text: see RESULTS.md.)
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import tyro
from common import emit, machine, peak_rss_mib

from memlab.data.sources import open_source
from memlab.data.text import bpe_training_text, prepare_shards
from memlab.data.tokenizer import build_tokenizer

VAL_FRACTION = 0.01  # memlab data prepare's default


@dataclass
class Args:
    source: str = "stdlib-code"
    tokenizers: list[str] = field(default_factory=lambda: ["byte", "bpe"])
    vocab_size: int = 8192
    bpe_train_bytes: int = 10_000_000
    out: str | None = None


def read_bytes(source) -> int:
    """Read every document of ``source`` (not tokenised): its UTF-8 bytes."""
    return sum(len(d.encode("utf-8", errors="replace")) for d in source.documents() if d.strip())


def main(args: Args) -> None:
    source = open_source(args.source)
    read_bytes(source)  # untimed: the files in the page cache, as the prepare runs after it find them
    start = time.perf_counter()
    text_bytes = read_bytes(source)
    read_s = time.perf_counter() - start
    result = {
        "benchmark": "data_prepare",
        "source": args.source,
        "text_mb": round(text_bytes / 1e6, 2),
        "read_only_mb_per_s": round(text_bytes / 1e6 / read_s, 2),
        "runs": {},
        "machine": machine(),
    }
    for spec in args.tokenizers:
        run: dict = {}
        tokenizer = spec
        if spec == "bpe":  # train first, so tokenising is timed on its own
            start = time.perf_counter()  # on the documents prepare_shards trains it on (its defaults' split)
            docs = bpe_training_text(source, None, VAL_FRACTION, 0, args.bpe_train_bytes)
            tokenizer = build_tokenizer("bpe", texts=docs, vocab_size=args.vocab_size)
            run["bpe_train_s"] = round(time.perf_counter() - start, 2)
        with tempfile.TemporaryDirectory() as out:
            prepared = prepare_shards(source, tokenizer, out, vocab_size=args.vocab_size, val_fraction=VAL_FRACTION,
                                      force=True)
        tokens = sum(s["tokens"] for s in prepared.header["splits"].values())
        separators = sum(s["documents"] for s in prepared.header["splits"].values())  # an EOS after each document
        run.update(
            seconds=round(prepared.seconds, 2),
            mb_per_s=round(prepared.mb_per_s, 2),
            tokens=tokens,
            tokens_per_s=round(tokens / prepared.seconds),
            bytes_per_token=round(prepared.text_bytes / (tokens - separators), 3),  # of the text's own tokens
            ratio_to_read_only=round(prepared.mb_per_s / result["read_only_mb_per_s"], 4),
        )
        result["runs"][spec] = run
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    emit(result, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
