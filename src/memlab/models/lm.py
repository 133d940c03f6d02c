"""The language model: embedding -> body of blocks -> final norm -> head.

``model(input_ids)`` is the parallel form; ``model(input_ids, state=state)`` consumes
new tokens through the per-layer states (prefill and decode are the same call).
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import stat
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from memlab.config import ModelConfig, check_types
from memlab.data.tasks.base import IGNORE_INDEX
from memlab.errors import MemlabError, naming_write_failures
from memlab.mixers import Mixer, MixerState
from memlab.models.body import Stack
from memlab.ops.linear_cross_entropy import linear_cross_entropy, linear_token_nll

BODIES: dict[str, type[nn.Module]] = {"stack": Stack}
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


@dataclass
class ModelState:
    """The whole model's recurrent state: the body's per-layer states and the position."""

    layers: list
    batch_size: int
    position: int = 0
    checked_by: weakref.ref | None = field(default=None, repr=False, compare=False)  # the model that took it last

    @property
    def nbytes(self) -> int:
        return _nbytes(self.layers)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The layer states' types, in order: what tells a state of another model apart."""
        return tuple(type(layer).__name__ for layer in self.layers)


def _runs(kinds: tuple[str, ...]) -> str:
    """``("KVCache", "KVCache", "DeltaState")`` -> ``"2 x KVCache, DeltaState"``."""
    groups = [(kind, len(list(run))) for kind, run in itertools.groupby(kinds)]
    return ", ".join(f"{n} x {kind}" if n > 1 else kind for kind, n in groups)


def _nbytes(obj) -> int:
    if isinstance(obj, MixerState):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    return 0


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = None
        if config.pos_encoding == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        if config.recursion.kind not in BODIES:
            import memlab.models.recursion  # noqa: F401  (registers the recursive bodies)
        self.body = BODIES[config.recursion.kind](config)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    # ---------------------------------------------------------------- building
    def reset_parameters(self) -> None:
        """N(0, init_std) for matrices; residual output projections (named ``out_proj`` or ``down_proj``,
        or marked ``writes_residual``) scaled by 1/sqrt(2 * layers)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("out_proj", "down_proj")) or getattr(module, "writes_residual", False)
                scale = 1 / math.sqrt(2 * self.config.n_layers) if residual else 1
                nn.init.normal_(module.weight, std=std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Mixer):
                module.init_special_parameters()

    @property
    def mixers(self) -> list[Mixer]:
        return [m for m in self.modules() if isinstance(m, Mixer)]

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; ``non_embedding`` leaves out token/position embeddings (and an untied head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
            if self.pos_embed is not None:
                n -= self.pos_embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.head.weight.numel()
        return n

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        state: ModelState | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        reduction: Literal["sum", "none"] = "sum",
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits; with ``state``, continue from it and update it.

        ``logits_to_keep`` > 0 returns only the last that many positions' logits (B, n, vocab): a
        prefill that needs the next token's distribution only does not hold T x vocab floats.
        With ``labels`` (B, T), returns instead the cross-entropy summed over the positions whose
        label is not ``IGNORE_INDEX`` (a scalar, float32 at least), without materialising the logits;
        with ``reduction="none"`` too, each position's (B, T) (0 where the label is ``IGNORE_INDEX``),
        for evaluation (no gradients).
        """
        self._check_inputs(input_ids, state, labels)
        if logits_to_keep < 0:
            raise MemlabError(f"logits_to_keep must be >= 0 (0: every position's), got {logits_to_keep}")
        if reduction not in ("sum", "none") or (reduction == "none" and labels is None):
            raise MemlabError(f"reduction must be 'sum' or 'none' (with labels), got {reduction!r}")
        T = input_ids.shape[1]
        h = self.embed(input_ids)  # (B, T, D)
        start = 0 if state is None else state.position
        if self.pos_embed is not None:
            if start + T > self.config.max_seq_len:
                raise MemlabError(
                    f"context of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len} "
                    "of this model's learned positions"
                )
            h = h + self.pos_embed(torch.arange(start, start + T, device=input_ids.device))
        h = self.body(h, None if state is None else state.layers)
        if state is not None:
            state.position += T
        if labels is not None and reduction == "none":
            nll = linear_token_nll(self.norm(h).flatten(0, 1), self.head.weight, labels.flatten(), IGNORE_INDEX)
            return nll.view_as(labels)
        if labels is not None:
            return linear_cross_entropy(self.norm(h).flatten(0, 1), self.head.weight, labels.flatten(), IGNORE_INDEX)
        return self.head(self.norm(h[:, -logits_to_keep:] if logits_to_keep else h))

    def _check_inputs(self, input_ids: torch.Tensor, state: ModelState | None, labels: torch.Tensor | None) -> None:
        """One clear error for ids, labels or a state that do not fit this model (otherwise a deep
        torch error, or with labels of another shape a silently wrong loss)."""
        ids = input_ids
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):  # (what an embedding takes)
            raise MemlabError(f"input_ids must be a (B, T) tensor of int64 or int32 ids (.long() converts), "
                              f"got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() == 0:  # (a mixer's reshape of nothing, otherwise)
            raise MemlabError(f"input_ids of shape {tuple(ids.shape)} has no positions: a forward needs a token")
        if ids.device.type == "cpu" and not torch.compiler.is_compiling():  # (a GPU would be waited for at every step)
            lo, hi = (int(v) for v in ids.aminmax())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise MemlabError(f"token id {bad} is outside the model's vocabulary of {self.config.vocab_size}")
        if labels is not None and labels.shape != ids.shape:
            raise MemlabError(f"labels of shape {tuple(labels.shape)} do not match input_ids {tuple(ids.shape)}")
        if state is None or (state.checked_by is not None and state.checked_by() is self
                             and state.batch_size == ids.shape[0]):  # fmt: skip
            return  # (the kinds are compared once per state and model, not at every decoded token)
        kinds = self.init_state(1, device="meta").kinds  # now: evaluation may change an ACT model's steps
        if (state.kinds, state.batch_size) != (kinds, ids.shape[0]):
            raise MemlabError(f"this state holds {state.batch_size} sequence(s) of a model with layer states "
                              f"{_runs(state.kinds)}; this model ({self.config.variant}) needs {ids.shape[0]} and "
                              f"{_runs(kinds)}: make it with this model's init_state(batch_size)")
        state.checked_by = weakref.ref(self)  # (a copy of the state copies the reference, not the model)

    @property
    def decodes_by_recomputing(self) -> bool:
        """Whether decoding must recompute the parallel form at every token: under a horizon ablation
        of a mixer that has no recurrent form of it."""
        return any(m.horizon is not None and not m.native_horizon for m in self.mixers)

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> ModelState:
        device = device or self.embed.weight.device
        return ModelState(self.body.init_state(batch_size, device, dtype), batch_size)

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        """Bytes of recurrent state per ``batch_size`` sequences after ``context_len`` tokens."""
        return self.body.state_nbytes(context_len, batch_size, dtype)

    def aux_losses(self, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Auxiliary losses of the last forward, summed over layers by name (already weighted);
        ``valid`` (B, T) marks the positions whose input is a real token (None: all), so that
        padding does not enter routing balance or ponder costs."""
        out: dict[str, torch.Tensor] = {}
        for source in [*self.mixers, self.body]:
            for name, value in source.aux_loss(valid).items():
                out[name] = out[name] + value if name in out else value
        return out

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """Gate/route statistics of the last forward: ``layer{i}.{name}`` plus the body's, over the
        positions ``valid`` (B, T) marks real (None: all), as the auxiliary losses count them."""
        out = {f"layer{m.layer_idx}.{k}": v for m in self.mixers for k, v in m.diagnostics(valid).items()}
        out.update(self.body.diagnostics(valid))
        return out

    def estimate_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at context ``seq_len``."""
        return self.body.flops_per_token(seq_len) + 6.0 * self.head.weight.numel()

    # --------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """Prefill the prompts (B, T) then decode through the states; returns (B, T + new), where
        new stops short of ``max_new_tokens`` once every row has emitted ``eos_id``.

        Greedy when ``temperature == 0``; else sampled from the ``top_k`` most likely tokens and
        the nucleus of probability ``top_p`` (None: no such cut).  Rows that emitted ``eos_id``
        are padded with it.  Under a horizon ablation the stateless parallel form is recomputed
        at every step.
        """
        self._check_inputs(input_ids, None, None)
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        vocab = self.config.vocab_size
        if eos_id is not None and not (isinstance(eos_id, numbers.Integral) and 0 <= eos_id < vocab):
            raise MemlabError(f"eos_id must be a token id in [0, {vocab}), got {eos_id!r}")
        T = input_ids.shape[1]
        if self.pos_embed is not None and T + max_new_tokens - 1 > self.config.max_seq_len:
            raise MemlabError(f"{T} prompt tokens and {max_new_tokens} new ones exceed max_seq_len="
                              f"{self.config.max_seq_len} of this model's learned positions")
        stateless = self.decodes_by_recomputing
        B = input_ids.shape[0]
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        out = input_ids
        state = None if stateless else self.init_state(B)
        logits = self(input_ids, state, logits_to_keep=1)[:, -1]
        for step in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_id), token)
                finished |= token == eos_id
            out = torch.cat([out, token[:, None]], dim=1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
                break  # (the last token needs no forward)
            logits = (self(out, logits_to_keep=1) if stateless else self(token[:, None], state))[:, -1]
        return out

    # --------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickled code) into directory ``path``."""
        from memlab import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with naming_write_failures(path / WEIGHTS_FILE, SafetensorError):
            save_model(self, str(path / WEIGHTS_FILE))
        dtype = str(self.embed.weight.dtype).removeprefix("torch.")  # (a bf16 model had come back float32)
        meta = {"memlab_version": __version__, "dtype": dtype, "model": self.config.to_dict()}
        with naming_write_failures(path / CONFIG_FILE):
            (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        # safetensors writes its file for the owner alone (0600); give it the umask's mode, as config.json has
        os.chmod(path / WEIGHTS_FILE, stat.S_IMODE((path / CONFIG_FILE).stat().st_mode))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
        """Load a directory written by :meth:`save`."""
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise MemlabError(f"{path} is not a memlab model directory: {name} is missing")
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
            check_types(ModelConfig, meta["model"], path / CONFIG_FILE)  # a value of the wrong type: one line
            config = ModelConfig.from_dict(meta["model"])
            dtype = getattr(torch, meta.get("dtype", "float32"))  # (older directories: float32)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{meta['dtype']!r} is not a dtype")
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # (not JSON, not UTF-8, no model entry)
            raise MemlabError(f"corrupt {path / CONFIG_FILE}: {e}") from None
        model = cls(config).to(dtype)
        try:
            load_model(model, str(path / WEIGHTS_FILE), strict=True, device=str(device))
        except Exception as e:  # safetensors raises several types for truncated/mismatched files
            detail = " ".join(line.strip() for line in str(e).splitlines())[:400]  # the keys too, on one line
            raise MemlabError(f"cannot load weights from {path / WEIGHTS_FILE}: {detail}") from None
        return model.to(device)


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, spell=lambda name: name
) -> None:
    """A MemlabError for the first of :meth:`LanguageModel.generate`'s options out of range;
    ``spell`` writes an option's name (as a command's flag)."""
    typed = [("max_new_tokens", max_new_tokens, numbers.Integral, "an integer"),
             ("temperature", temperature, numbers.Real, "a number"),
             ("top_k", top_k, numbers.Integral | None, "an integer"),
             ("top_p", top_p, numbers.Real | None, "a number")]
    for name, value, kind, wanted in typed:  # (top_k 2.5 had failed deep in torch.topk)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MemlabError(f"{spell(name)} must be {wanted}, got {value!r}")
    if not max_new_tokens >= 1:
        raise MemlabError(f"{spell('max_new_tokens')} must be >= 1, got {max_new_tokens}")
    if not 0 <= temperature < math.inf:  # also refuses nan
        raise MemlabError(f"{spell('temperature')} must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and not top_k >= 1:
        raise MemlabError(f"{spell('top_k')} must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise MemlabError(f"{spell('top_p')} must be in (0, 1], got {top_p}")
    if temperature == 0 and (top_k is not None or top_p is not None):  # (it had been ignored without a word)
        name = spell("top_k" if top_k is not None else "top_p")
        raise MemlabError(f"{name} restricts sampling, but {spell('temperature')} 0 decodes greedily; "
                          f"give {spell('temperature')} > 0")


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator=None
) -> torch.Tensor:
    """(B, V) logits -> (B,) next tokens: the argmax when ``temperature <= 0``; else a draw from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens (and those tied
    with the k-th) and to the smallest set whose probability reaches ``top_p`` (the most likely
    token always stays)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.double()  # a temperature below float32's smallest number must not round to 0
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature  # <= 0: a tiny temperature cannot overflow
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the more likely tokens already hold top_p
        outside[:, 0] = False  # (top_p = 0 had masked every token)
        logits = logits.masked_fill(torch.empty_like(outside).scatter_(-1, order, outside), float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
