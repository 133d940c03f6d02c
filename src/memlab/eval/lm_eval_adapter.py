"""memlab models in EleutherAI's lm-evaluation-harness (``lm-eval``, the optional extra).

Importing this module registers the model class ``memlab`` with lm-eval::

    import lm_eval, memlab.eval.lm_eval_adapter  # noqa: F401  (registers "memlab")
    lm_eval.simple_evaluate(model="memlab", model_args="checkpoint=runs/tiny", tasks=["lambada_openai"])

and this module runs lm-eval's own command line with ``memlab`` registered (lm-eval has no
plugin discovery, so ``lm_eval --model memlab`` needs memlab imported first)::

    python -m memlab.eval.lm_eval_adapter --model memlab --model_args checkpoint=runs/tiny --tasks hellaswag

Scoring uses memlab's tokenizer and the parallel forward (right-padded batches: the models are
causal, so padding after a sequence never changes its logits); ``generate_until`` prefills the
context through the recurrent state and decodes one token at a time until a stop sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from memlab.data.tokenizer import Tokenizer
from memlab.errors import MemlabError
from memlab.launcher import fail
from memlab.models.lm import sample_next

log = logging.getLogger(__name__)
Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings, context ids, continuation ids)
GENERATION_OPTIONS = frozenset({"max_gen_toks", "do_sample", "temperature", "top_k", "top_p"})  # after "until"


@register_model("memlab")
class MemlabLM(TemplateLM):
    """A memlab checkpoint (run, checkpoint, model or export directory) as an lm-eval model.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda:N``; like lm-eval's own ``hf`` model,
    an unavailable CUDA device (lm-eval's default is ``cuda:0``) falls back to the CPU with a warning.

    ``batch_size`` caps the rows of a scoring batch (``auto``: no cap) and ``batch_tokens`` its
    padded tokens; ``max_length`` is the context window (default: the model's ``max_seq_len``).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        model: nn.Module | None = None,
        tokenizer: Tokenizer | None = None,
        device: str = "auto",
        batch_size: int | str = "auto",
        batch_tokens: int = 8192,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        max_batch_size: int | None = None,  # accepted from lm-eval's CLI; batch_tokens bounds memory instead
    ) -> None:
        super().__init__()
        from memlab.eval.hub import load_checkpoint

        if (checkpoint is None) == (model is None):
            raise ValueError("give exactly one of checkpoint=DIR or model=... (with tokenizer=...)")
        if checkpoint is not None:
            if torch.device("cuda" if device == "auto" else device).type == "cuda" and not torch.cuda.is_available():
                log.warning("device %s is not available (lm-eval's default is cuda:0); using the CPU", device)
                device = "cpu"
            model, tokenizer, *_ = load_checkpoint(checkpoint, device)
        elif tokenizer is None:
            raise ValueError("a model object needs its tokenizer=...")
        self.model, self.tokenizer = model.eval(), tokenizer
        self._device = next(self.model.parameters()).device
        auto = str(batch_size).startswith("auto")
        self.max_rows = None if auto else int(batch_size)
        self.batch_tokens = int(batch_tokens)
        self._max_length = int(max_length or self.model.config.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------ lm-eval surface
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id  # memlab separates documents with EOS: it is also the prefix

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"memlab-{self.tokenizer.kind}-{self.tokenizer.hash[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)  # memlab tokenizers never add special tokens

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm-eval splits them: the context's trailing spaces move
        to the continuation, the pair is encoded whole and split at the context's token count.  Where
        a token merges across the boundary ("foo" + "bar" as one token), that split would score the
        wrong text or none at all (log-prob 0, greedy: a choice that always wins); there the two
        parts are encoded apart."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, context_ids = self.tok_encode(context + continuation), self.tok_encode(context)
        if whole[: len(context_ids)] == context_ids and (len(whole) > len(context_ids) or not continuation):
            return context_ids, whole[len(context_ids) :]
        return context_ids, self.tok_encode(continuation)

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding yields the continuation."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        windows = [self._window(context, continuation) for _, context, continuation in requests]
        for batch in self._batches([ids for ids, _ in windows]):
            for i, score in zip(batch, self._score([windows[i] for i in batch])):
                results[i] = score
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, in disjoint windows of ``max_length`` tokens (each token once)."""
        out = []
        for (text,) in (r.args for r in requests):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1)
            ]
            total = sum(lp for lp, _ in self._loglikelihood_tokens([(None, c, t) for c, t in windows]))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations, cut at the first stop sequence."""
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=None)
            text = self._generate(self.tok_encode(context), until, kwargs)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    # ------------------------------------------------------------------- helpers
    def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """(model input, targets): the input is context + continuation without its last token, cut to
        the last ``max_length`` tokens; the targets are the continuation's tokens, all of them.  An
        empty context (lm-eval moves a whitespace-only context into the continuation) is the prefix token."""
        if len(continuation) > self.max_length:  # its first tokens would go unscored
            raise MemlabError(f"a continuation of {len(continuation)} tokens exceeds max_length={self.max_length}: "
                              "raise max_length or score a shorter continuation")
        return ((context or [self.prefix_token_id]) + continuation)[-(self.max_length + 1) : -1], continuation

    def _batches(self, sequences: list[list[int]]) -> Iterator[list[int]]:
        """Indices of ``sequences``, longest first, grouped under the row and padded-token budgets."""
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        batch: list[int] = []
        for i in order:
            width = len(sequences[batch[0]]) if batch else len(sequences[i])
            full = self.max_rows is not None and len(batch) >= self.max_rows
            if batch and (full or (len(batch) + 1) * width > self.batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.no_grad()
    def _score(self, windows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Score each window's targets (the last predictions of its input) in one right-padded batch."""
        width = max(1, *(len(ids) for ids, _ in windows))
        batch = torch.full((len(windows), width), self.tokenizer.pad_id, dtype=torch.long)
        for b, (ids, _) in enumerate(windows):
            batch[b, : len(ids)] = torch.tensor(ids)
        logits = self.model(batch.to(self._device)).float()  # (B, T, V)
        out = []
        for b, (ids, targets) in enumerate(windows):
            n = len(targets)
            target_ids = torch.tensor(targets, device=self._device)
            out.append(self._continuation_score(logits[b, len(ids) - n : len(ids)], target_ids))
        return out

    @staticmethod
    def _continuation_score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, bool]:
        """(n, V) logits and (n,) target ids -> (sum of log-probabilities, all targets are the argmax)."""
        logprobs = F.log_softmax(logits, dim=-1)
        total = logprobs.gather(-1, targets[:, None]).sum().item()
        return float(total), bool((logits.argmax(-1) == targets).all())

    @torch.no_grad()
    def _generate(self, context: list[int], until: list[str], kwargs: dict) -> str:
        """Prefill ``context`` through the recurrent state, then decode one token per step (or recompute
        the whole text at every step, where the model decodes so)."""
        unsupported = sorted(set(kwargs) - GENERATION_OPTIONS)
        if unsupported:  # ignoring one would sample otherwise than the task asks
            raise MemlabError(f"generation options {unsupported} are not supported by memlab models "
                              f"(supported: {', '.join(sorted(GENERATION_OPTIONS))})")
        max_new = kwargs["max_gen_toks"]
        if max_new >= self.max_length:
            raise MemlabError(f"max_gen_toks={max_new} leaves no room for the prompt in max_length={self.max_length}: "
                              "lower max_gen_toks or raise max_length")
        context = (context or [self.prefix_token_id])[-(self.max_length - max_new) :]
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        top_k, top_p = kwargs.get("top_k") or None, kwargs.get("top_p")  # top_k 0: no cut, as in transformers
        top_p = top_p if top_p is not None and top_p < 1 else None
        stateless = self.model.decodes_by_recomputing  # (a horizon ablation without a recurrent form)
        state = None if stateless else self.model.init_state(1)
        logits = self.model(torch.tensor([context], device=self._device), state, logits_to_keep=1)[:, -1]  # (1, V)
        generated: list[int] = []
        for step in range(max_new):
            token = int(sample_next(logits, temperature, top_k, top_p)[0])
            if token == self.eot_token_id:
                break
            generated.append(token)
            text = self.tok_decode(generated)
            stops = [text.index(s) for s in until if s and s in text]
            if stops:
                return text[: min(stops)]
            if step < max_new - 1:  # (the last token needs no forward)
                ids = context + generated if stateless else [token]
                logits = self.model(torch.tensor([ids], device=self._device), state, logits_to_keep=1)[:, -1]
        return self.tok_decode(generated)


def main() -> None:
    """lm-eval's command line, with the ``memlab`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except MemlabError as e:  # a missing or corrupt checkpoint: one line, as memlab's own commands say it
        fail(str(e))


if __name__ == "__main__":
    main()
