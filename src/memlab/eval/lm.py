"""Suite ``lm``: validation perplexity on a corpus, in windows of its validation split, with tokens/s.

The corpus is a prepared shard directory, a corpus source (prepared once with the model's
tokenizer into ``<out_dir>/lm_data/``, split as the run split its own data, so that a source it
trained on is measured on the documents it held out), or by default the validation split of the
data the run was trained on.  Every token after the first of a window is predicted once.

The windows are the split's consecutive windows, or where they hold more than ``--lm-tokens``, that
many tokens' worth of them spread evenly over the whole split (``tokens_from: "spread"``; an older
memlab measured the split's prefix, its first documents only): the same text for every model given
the same corpus, window and ``--lm-tokens``.  The interval is a studentized bootstrap over the documents (the
split's EOS ids end them) those tokens fall in, not over windows: consecutive windows of one
document are correlated, and a t-interval over them had been about twice too narrow.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlab.data.shards import HEADER_FILE, MIN_DOCUMENTS, WINDOW_PLACEMENT, TokenShards, read_header
from memlab.errors import MemlabError
from memlab.eval.exact_match import check_context
from memlab.eval.hub import EvalContext, file_safe, held_out_split, register_suite, run_data, run_data_dir
from memlab.eval.stats import document_bootstrap


def corpus_and_window(ctx: EvalContext) -> tuple[str, int]:
    """The corpus spec and the window length the options name."""
    spec = ctx.options.corpus or run_data_dir(ctx.run_dir)
    if spec is None:
        gone = None if ctx.run_dir is None else run_data(ctx.run_dir).get("data_dir")
        where = f"the run's data {gone} is not found; " if gone else ""  # (a run moved, or its data deleted)
        raise MemlabError(f"the lm suite needs a corpus: {where}--corpus DIR (prepared shards) or a source like "
                          "stdlib-docs")
    lm_context = ctx.options.lm_context
    return spec, min(ctx.model.config.max_seq_len, 512) if lm_context is None else lm_context


def check(ctx: EvalContext) -> None:
    """Refuse a missing corpus, a window beyond the model's context or longer than the corpus's
    validation split (before any suite runs: the split is prepared here if it must be)."""
    spec, seq_len = corpus_and_window(ctx)
    check_context(ctx.model, seq_len, "the lm window (--lm-context)")
    if ctx.options.lm_tokens < seq_len:  # (one whole window had been evaluated, more than asked for)
        raise MemlabError(f"--lm-tokens {ctx.options.lm_tokens} is less than one window of {seq_len} tokens; "
                          "raise it or shorten the window (--lm-context)")
    name, shards = open_corpus(ctx, spec)
    if shards.num_tokens == 0:  # (shortening the window had been the advice)
        raise MemlabError(f"the validation split of {name} holds no document: use a larger corpus (--corpus), or "
                          "shards prepared with a larger --val-fraction")
    if shards.num_tokens < seq_len + 1:  # (the shards' own error came after the other suites, naming seq_len)
        raise MemlabError(f"the validation split of {name} has {shards.num_tokens} tokens, fewer than one lm window "
                          f"of {seq_len} + 1; shorten the window (--lm-context) or use a larger corpus (--corpus)")


def open_corpus(ctx: EvalContext, spec: str) -> tuple[str, TokenShards]:
    """(name, validation shards) of corpus ``spec`` (see the module docstring)."""
    if (Path(spec) / HEADER_FILE).is_file():
        directory = Path(spec)
        made_with = read_header(directory)["tokenizer_hash"]
        if made_with != ctx.tokenizer.hash:  # (the advice had been Python's: load_tokenizer on its directory)
            raise MemlabError(
                f"the shards in {directory} were made with tokenizer {made_with[:12]}, not the model's "
                f"({ctx.tokenizer.hash[:12]}); prepare them in the model's: memlab data prepare --source SOURCE "
                "--tokenizer CHECKPOINT --out DIR, or give --corpus SOURCE"
            )
    else:
        from memlab.data.text import prepare_shards

        if ctx.out_dir is None:
            raise MemlabError(f"corpus {spec!r} is not a prepared shard directory and there is no out_dir for it")
        directory = ctx.out_dir / "lm_data" / file_safe(spec)
        fraction, seed = held_out_split(ctx.run_dir, spec)  # the run's held-out documents, if it trained on spec
        prepare_shards(spec, ctx.tokenizer, directory, val_fraction=fraction, split_seed=seed)
    checksum = _recorded_checksum(ctx, directory)
    return str(spec), TokenShards(directory, "val", tokenizer=ctx.tokenizer, checksum=checksum)


def _recorded_checksum(ctx: EvalContext, directory: Path) -> str | None:
    """The checksum the run recorded of ``directory`` when it is the run's own data (prepared again
    since with other text, it would measure other documents than those the run held out), else None."""
    if ctx.run_dir is None:
        return None
    data = run_data(ctx.run_dir)
    recorded = data.get("data_dir")
    return data.get("shards_sha256") if recorded and Path(recorded).resolve() == directory.resolve() else None


def _exp(x: float) -> float:
    """exp(x), inf where it overflows (a diverged model's perplexity, written as null)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@torch.no_grad()
def document_losses(
    model: torch.nn.Module, shards: TokenShards, batch: int, seq_len: int, max_windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and predicted tokens (D,), (D,) of each document (ended by the split's EOS ids) that
    the split's evaluation windows (at most ``max_windows``, :meth:`TokenShards.evaluation_starts`)
    predict tokens of, in text order."""
    device = next(model.parameters()).device
    nlls, doc_ids = [], []  # per predicted token, in text order: its NLL and its document's index in the split
    for starts, windows in shards.evaluation_windows(batch, seq_len, max_windows=max_windows):  # (b,), (b, T + 1)
        windows = windows.to(device)
        nll = model(windows[:, :-1], labels=windows[:, 1:], reduction="none")  # (b, T), never the (b, T, V) logits
        nlls.append(nll.flatten().double().cpu().numpy())
        positions = starts[:, None] + np.arange(1, seq_len + 1)  # (b, T) the targets' places in the split
        doc_ids.append(shards.documents_before(positions.ravel()))
    _, ids = np.unique(np.concatenate(doc_ids), return_inverse=True)  # (N,) the documents met, renumbered
    return np.bincount(ids, weights=np.concatenate(nlls)), np.bincount(ids)


@register_suite("lm", check=check)
@torch.no_grad()
def run(ctx: EvalContext) -> dict[str, Any]:
    model, options = ctx.model, ctx.options
    spec, seq_len = corpus_and_window(ctx)  # checked by evaluate_model before any suite ran
    name, shards = open_corpus(ctx, spec)
    batch = max(1, options.batch_tokens // seq_len)
    max_windows = max(1, options.lm_tokens // seq_len)
    t0 = time.perf_counter()
    doc_nll, doc_tokens = document_losses(model, shards, batch, seq_len, max_windows)
    seconds = time.perf_counter() - t0
    total_tokens = int(doc_tokens.sum())
    loss = float(doc_nll.sum()) / total_tokens
    interval = document_bootstrap(doc_nll, doc_tokens, seed=options.seed)
    return {
        "corpus": name,
        "corpus_request": shards.header["request"],
        "context_len": seq_len,
        "tokens": total_tokens,
        "windows": total_tokens // seq_len,
        "tokens_from": WINDOW_PLACEMENT,
        "documents": int(doc_tokens.size),
        "loss": loss,
        "perplexity": _exp(loss),
        "loss_ci95": interval,
        "perplexity_ci95": [None if v is None else _exp(v) for v in interval],
        "ci95_note": None if doc_tokens.size >= MIN_DOCUMENTS else (
            f"{doc_tokens.size} document(s): too few to resample for an interval (it needs {MIN_DOCUMENTS}); "
            "evaluate more tokens (--lm-tokens) or a larger corpus"),
        "tokens_per_s": total_tokens / seconds,
    }
