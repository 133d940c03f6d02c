"""Model configuration: dataclasses, size presets and the registry of variants.

A *size* fixes width, depth and heads; a *variant* fixes the architecture (layer
pattern, mixer options, recursion).  ``build_config(variant, size, **overrides)``
combines the two; overrides use dotted names for sub-configs (``gdn.chunk_size``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from memlab.errors import MemlabError, check_finite, choose

log = logging.getLogger(__name__)


@dataclass
class AttentionConfig:
    """Causal attention (letter ``A``) and sliding-window attention (letter ``S``)."""

    window: int = 128  # key window of 'S' layers (tokens, the query included)
    rope_theta: float = 10000.0


@dataclass
class GDNConfig:
    """Gated DeltaNet (``G``), DeltaNet (``D``) and the hybrid's state-reading window layer (``W``)."""

    n_heads: int | None = None  # default: the model's n_heads
    head_dim: int | None = None  # key/query width per head; default d_model // n_heads
    expand_v: float = 1.0  # value width = expand_v * head_dim
    conv_size: int = 4
    chunk_size: int = 32  # CPU chunked kernel (32 is the fastest at K = V = 64; fla uses its own on CUDA)
    beta_floor: float = 0.0  # beta = floor + (1 - floor) * sigmoid(.)
    allow_neg_eigval: bool = False  # beta in (0, 2)
    g_bias: float | None = None  # when set: initial retention exp(g) = sigmoid(g_bias) in every head
    shifted_pairing: bool = False  # write k_{t-1} with v_t
    state_read: bool = True  # 'W' layers read the nearest preceding G/D layer's state
    local_drop_prob: float = 0.0  # 'W' layers: per-sequence drop of the window branch in training
    local_scale: float | None = None  # 'W' layers: window-branch scale at evaluation (None: 1 - local_drop_prob,
    # the branch's mean weight in training; the source paired a 0.7 drop with 0.3)


@dataclass
class CDMConfig:
    """Competitive Docking Memory slots (letters ``C`` and ``K``)."""

    version: Literal["v2", "v3"] = "v2"
    n_slots: int = 16
    readout: Literal["gate", "xattn", "both"] = "both"
    hard_routing: bool = False  # V3 winner-take-all writes (straight-through)
    eta_hidden: int = 64  # width of the input-dependent decay network (V2)
    eta_bias: float = -2.0  # initial output bias of eta: writes start small, sigmoid(-2) ~ 0.12
    alpha_init: float = 0.0  # V3: initial log_alpha of every slot (symmetric), sigmoid(0) = 0.5
    entropy_reg: float = 0.02
    load_balance: float = 0.0  # V3: 0.01
    chunk_size: int = 16  # slot scan chunk (16 is the fastest on CPU at d=384, K=16, both read-outs)


@dataclass
class SSMConfig:
    """Mamba-2 (letter ``M``)."""

    d_state: int = 64
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 1
    conv_size: int = 4
    chunk_size: int = 64  # SSD chunk; halved where a chunk's decay would overflow the factorised form
    dt_min: float = 0.001
    dt_max: float = 0.1


@dataclass
class RecursionConfig:
    """How the blocks are applied: a plain stack, a shared loop, ACT, or latent thoughts."""

    kind: Literal["stack", "shared_loop", "act", "latent"] = "stack"
    n_unroll: int = 1  # shared_loop iterations over the unique blocks
    reinject: bool = False  # add the embedding back at every iteration
    n_thoughts: int = 16  # latent: Z thought vectors
    thought_iters: int = 4  # latent: K refinements
    segment_len: int = 64  # latent: thoughts are updated once per segment
    act_min_steps: int = 2
    act_max_steps: int = 8
    act_threshold: float = 0.99
    lambda_ponder: float = 0.01
    act_fixed_steps: int | None = None  # evaluation: force K steps
    n_memory_tokens: int = 0  # ssm_mem: learned memory tokens every position reads


_AT_LEAST: dict[str, int] = {  # the bounds of the numeric fields (None, an unset optional one, passes)
    "vocab_size": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "d_ff": 0, "max_seq_len": 1,
    "init_std": 0, "attention.window": 1,
    "gdn.n_heads": 1, "gdn.head_dim": 1, "gdn.conv_size": 1, "gdn.chunk_size": 1,
    "cdm.n_slots": 1, "cdm.eta_hidden": 1, "cdm.entropy_reg": 0, "cdm.load_balance": 0, "cdm.chunk_size": 1,
    "ssm.d_state": 1, "ssm.expand": 1, "ssm.head_dim": 1, "ssm.n_groups": 1, "ssm.conv_size": 1, "ssm.chunk_size": 1,
    "recursion.n_unroll": 1, "recursion.n_thoughts": 1, "recursion.thought_iters": 1, "recursion.segment_len": 1,
    "recursion.lambda_ponder": 0, "recursion.n_memory_tokens": 0,
}  # fmt: skip
_POSITIVE = ("norm_eps", "attention.rope_theta", "gdn.expand_v", "ssm.dt_min")


def _check_choices(cfg: object, prefix: str = "") -> None:
    """A MemlabError naming the valid choices for the first field whose value is not among its
    ``Literal`` type's (sub-configs under their dotted names)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(hints[f.name]) is Literal:
            choose(f"{prefix}{f.name}", value, typing.get_args(hints[f.name]))


def _check_bounds(cfg: ModelConfig) -> None:
    """A MemlabError for the first numeric field out of its bounds (NaN included)."""
    for name in (*_AT_LEAST, *_POSITIVE):
        value = functools.reduce(getattr, name.split("."), cfg)
        low = _AT_LEAST.get(name)
        if value is not None and not (value >= low if low is not None else value > 0):
            raise MemlabError(f"{name} must be {'> 0' if low is None else f'>= {low}'}, got {value}")


@dataclass
class ModelConfig:
    """Everything needed to build a :class:`memlab.models.lm.LanguageModel`."""

    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # GQA; default n_heads
    d_ff: int | None = None  # SwiGLU hidden width; default ~8/3 d_model rounded to 64; 0 = no FFN
    max_seq_len: int = 2048
    pos_encoding: Literal["rope", "learned", "none"] = "rope"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    layer_pattern: str = "A"  # one letter per layer; repeated to n_layers
    init_std: float = 0.02
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    gdn: GDNConfig = field(default_factory=GDNConfig)
    cdm: CDMConfig = field(default_factory=CDMConfig)
    ssm: SSMConfig = field(default_factory=SSMConfig)
    recursion: RecursionConfig = field(default_factory=RecursionConfig)
    variant: str = "baseline"
    size: str = "custom"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return 64 * round(8 * self.d_model / 3 / 64)

    @property
    def pattern(self) -> str:
        """The layer pattern expanded (tiled) to exactly ``n_layers`` letters."""
        p = self.layer_pattern
        return (p * (self.n_layers // len(p) + 1))[: self.n_layers]

    def validate(self) -> ModelConfig:
        _check_choices(self)
        check_types(ModelConfig, self.to_dict(), "the model config")
        check_finite(self, prefix="")
        _check_bounds(self)
        if not 0.0 <= self.gdn.local_drop_prob < 1.0:  # (checked whatever the pattern: no flag is taken and ignored)
            raise MemlabError(f"gdn.local_drop_prob must lie in [0, 1), got {self.gdn.local_drop_prob}")
        if self.ssm.dt_min > self.ssm.dt_max:
            raise MemlabError(f"ssm.dt_min={self.ssm.dt_min} exceeds ssm.dt_max={self.ssm.dt_max}")
        if self.d_model % self.n_heads:
            raise MemlabError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise MemlabError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise MemlabError(f"RoPE needs an even head dimension, got {self.head_dim}")
        from memlab.mixers import MIXERS  # the letters known at validation time

        bad = sorted(set(self.layer_pattern) - set(MIXERS))
        if bad or not self.layer_pattern:
            raise MemlabError(
                f"layer pattern {self.layer_pattern!r} has unknown letters {bad}; "
                f"valid letters: {', '.join(f'{k}={v.__name__}' for k, v in sorted(MIXERS.items()))}"
            )
        dropped = sorted(set(self.layer_pattern) - set(self.pattern))
        if dropped:  # a pattern longer than the model, cut before some of its kinds of layer
            raise MemlabError(
                f"n_layers={self.n_layers} cuts the layer pattern {self.layer_pattern!r} to {self.pattern!r}, "
                f"which has no {'/'.join(dropped)} layer: give at least {len(self.layer_pattern)} layers"
            )
        if self.recursion.n_memory_tokens and "R" not in self.pattern:  # else no layer would read the memory
            raise MemlabError(
                f"recursion.n_memory_tokens={self.recursion.n_memory_tokens} needs a memory reader 'R' in the "
                f"layer pattern, but {self.layer_pattern!r} has none"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, d)


def from_dict(cls, d: dict[str, Any]):
    """Build a (nested) dataclass from a dict, rejecting unknown keys."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise MemlabError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {', '.join(names)}")
    kwargs = {}
    for key, value in d.items():
        sub = _dataclass_type(cls, key)
        kwargs[key] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def check_types(cls: type, data: dict[str, Any], path: str | Path, prefix: str = "") -> None:
    """Refuse a value of ``data`` (read from the file ``path``) whose type does not fit its field of
    dataclass ``cls`` (dotted names for sub-dataclasses: ``gdn.chunk_size``); unknown names are left
    to the caller, which reports them with the valid ones."""
    if not isinstance(data, dict):
        raise MemlabError(f"{path}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    for name, value in data.items():
        field_type: Any = cls
        for part in str(name).split("."):
            hints = typing.get_type_hints(field_type) if dataclasses.is_dataclass(field_type) else {}
            if part not in hints:
                field_type = None
                break
            field_type = hints[part]
        if field_type is None:
            continue
        if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
            check_types(field_type, value, path, f"{prefix}{name}.")
        else:
            try:
                check_type(value, field_type, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
                if isinstance(value, bool) and not (field_type in (bool, Any) or bool in typing.get_args(field_type)):
                    raise TypeCheckError("a bool is no number")  # (an int field had taken `true` as 1)
            except TypeCheckError:
                expected = field_type.__name__ if isinstance(field_type, type) else str(field_type)
                expected = expected.replace("typing.", "")
                raise MemlabError(f"{path}: {prefix}{name} must be of type {expected}, got {value!r}") from None


def _dataclass_type(cls, name: str):
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


# --------------------------------------------------------------------------- sizes

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, d_ff=384, vocab_size=512, max_seq_len=2048),
    "nano": dict(d_model=512, n_layers=6, n_heads=8, d_ff=1408, vocab_size=8192, max_seq_len=2048),
    "50M": dict(d_model=512, n_layers=8, n_heads=8, d_ff=1408, vocab_size=32000, max_seq_len=2048),
    "125M": dict(d_model=768, n_layers=12, n_heads=12, d_ff=2048, vocab_size=32000, max_seq_len=2048),
    "300M": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=2816, vocab_size=32000, max_seq_len=2048),
    "350M": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=3072, vocab_size=32000, max_seq_len=2048),
    "760M": dict(d_model=1280, n_layers=36, n_heads=20, d_ff=3456, vocab_size=32000, max_seq_len=2048),
    "1B": dict(d_model=2048, n_layers=18, n_heads=16, d_ff=5504, vocab_size=32000, max_seq_len=4096),
    "1B-16k": dict(
        d_model=2048, n_layers=18, n_heads=16, n_kv_heads=4, d_ff=5504, vocab_size=32000, max_seq_len=16384
    ),
}

_WIDTH_DEPTH = re.compile(r"^d(\d+)[x_-]?l(\d+)$", re.IGNORECASE)


def size_fields(size: str) -> dict[str, Any]:
    """The fields of a size preset, or of a width/depth pair written ``d256l4``."""
    if size in SIZES:
        return dict(SIZES[size])
    m = _WIDTH_DEPTH.match(size)
    if m:
        d, n = int(m.group(1)), int(m.group(2))
        heads = max(1, d // 64)
        return dict(d_model=d, n_layers=n, n_heads=heads, vocab_size=8192, max_seq_len=2048)
    raise MemlabError(
        f"unknown size {size!r}; valid choices: {', '.join(SIZES)} or a width/depth pair like d256l4"
    )


# ------------------------------------------------------------------------ variants

VariantFn = Callable[[ModelConfig], None]
VARIANTS: dict[str, VariantFn] = {}
VARIANT_DOCS: dict[str, str] = {}


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    """Register ``fn(config)`` that turns a size-preset config into variant ``name`` in place."""

    def wrap(fn: VariantFn) -> VariantFn:
        VARIANTS[name] = fn
        VARIANT_DOCS[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return fn

    return wrap


def list_variants() -> list[str]:
    _load_variant_modules()
    return sorted(VARIANTS)


def build_config(variant: str = "baseline", size: str = "tiny", **overrides: Any) -> ModelConfig:
    """The config of ``variant`` at ``size``, with ``overrides``: sub-config fields by dotted names
    (``**{"gdn.chunk_size": 8}``) or, as keyword arguments, with ``__`` for the dot (``gdn__chunk_size=8``)."""
    _load_variant_modules()
    choose("variant", variant, VARIANTS)
    cfg = ModelConfig(**size_fields(size), variant=variant, size=size)
    apply_overrides(cfg, overrides)  # first, so that the variant builds on the overridden size (n_layers, ...)
    VARIANTS[variant](cfg)
    apply_overrides(cfg, overrides)  # again, so that an override also wins over what the variant sets
    cfg.validate()
    _warn_unread(cfg, overrides)
    return cfg


_warned: set[str] = set()


def _warn_unread(cfg: ModelConfig, overrides: dict[str, Any]) -> None:
    """Warn, once, of an override of a mixer's own options (gdn, cdm, ssm) that no layer of ``cfg`` reads
    (``--gdn.beta_floor`` for baseline had been taken without a word)."""
    from memlab.mixers import MIXERS

    read = {MIXERS[letter].options_section for letter in set(cfg.pattern)}
    owned = {m.options_section for m in MIXERS.values()} - {None}
    for key in flat_overrides(overrides):
        section = key.split(".")[0]
        if section in owned and section not in read:
            letters = "/".join(sorted(k for k, m in MIXERS.items() if m.options_section == section))
            message = (f"{key} has no effect: {cfg.variant} (layer pattern {cfg.layer_pattern!r}) has no "
                       f"{letters} layer")
            if message not in _warned:
                _warned.add(message)
                log.warning(message)


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> None:
    """Set ``overrides`` on ``cfg``: by dotted names (``gdn.chunk_size``), names that spell the dot
    ``__`` (``gdn__chunk_size``) or nested mappings, as :func:`flat_overrides` reads them."""
    for key, value in flat_overrides(overrides).items():
        *parents, name = key.split(".")
        setattr(functools.reduce(getattr, parents, cfg), name, value)


def flat_overrides(overrides: dict[str, Any], cls: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Model overrides by dotted names only (``{"gdn": {"chunk_size": 8}}`` -> ``{"gdn.chunk_size": 8}``;
    a later key wins), each naming a field of ``cls`` (ModelConfig); ``variant`` and ``size`` are not
    overrides.  (A file's nested form beside a flag's dotted one had been recorded as both, which the
    command line then could not read back.)"""
    cls = cls or ModelConfig
    hints = _field_types(cls)
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        head, *rest = str(key).replace("__", ".").split(".", 1)
        kind = hints.get(head) if prefix or head not in ("variant", "size") else None
        if kind is None or (rest and not dataclasses.is_dataclass(kind)):
            valid = [name for name in hints if prefix or name not in ("variant", "size")]
            own = " (an option of its own, not a model override)" if head in ("variant", "size") and not prefix else ""
            raise MemlabError(f"unknown model field {prefix + str(key)!r}{own}; valid: {', '.join(valid)}")
        if rest or (dataclasses.is_dataclass(kind) and isinstance(value, dict)):
            out.update(flat_overrides({rest[0]: value} if rest else value, kind, f"{prefix}{head}."))
        else:
            out[prefix + head] = value
    return out


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _load_variant_modules() -> None:
    """Variants are registered where their models live; importing the registry loads them."""
    import memlab.models.registry  # noqa: F401
