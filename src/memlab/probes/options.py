"""The options of ``memlab probe`` (light to import: the CLI builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from memlab.cli_help import DefaultInDoc
from memlab.errors import MemlabError, check_at_least, check_seed

PROBES = ("routing", "gates", "alphas", "domains", "trajectory")


@dataclass
class ProbeOptions:
    """What text a probe reads and how it measures."""

    corpus: str = "stdlib-code"
    """probe text: stdlib-code, stdlib-docs, lists (synthetic structured lists), hf:NAME[:SPLIT], files:GLOB"""
    domains: list[str] = field(default_factory=lambda: ["prose=stdlib-docs", "code=stdlib-code", "lists=lists"])
    """domains probe: NAME=SOURCE corpora to compare"""
    max_tokens: int = 32768
    """probe tokens per corpus"""
    text_field: str | None = None
    """the field of a files: (jsonl, parquet) or hf: corpus's rows that holds the text; every corpus
    the probe reads takes it, so the domains probe compares files: and hf: corpora alone with it"""
    seq_len: Annotated[int | None, DefaultInDoc] = None
    """window length the text is cut into (slots start fresh in every window); default: the seq_len
    the run trained with, else 256 (a model with learned positions: at most its max_seq_len)"""
    batch_size: int = 8
    documents: Literal["val", "all"] = "val"
    """val: only documents of the validation split (held out from training); all: every document"""
    val_fraction: Annotated[float | None, DefaultInDoc] = None
    """the validation fraction that selects the held-out documents (default: the run's, from its
    prepared data or its config; 0.01 for a model outside a run)"""
    split_seed: Annotated[int | None, DefaultInDoc] = None
    """the split seed of that selection (default: the run's, else 0)"""
    max_depth: int = 4
    """nesting depths >= this are pooled into one class"""
    permutations: int = 200
    """label shuffles of the permutation test"""
    top_tokens: int = 8
    """gates probe: trigger tokens listed per slot"""
    min_token_count: int = 5
    """gates probe: a token must occur this often to be a trigger, a role to be a slot's favoured role"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N"""

    def check(self) -> None:
        """Refuse a count out of range, a fraction outside [0, 1) or a malformed ``--domains`` with
        one line naming its flag (before any work)."""
        check_at_least(self, ("max_tokens", "seq_len", "batch_size", "max_depth", "top_tokens", "min_token_count"), 1)
        check_at_least(self, ("permutations", "split_seed"), 0)  # permutations 0: no p-values
        check_seed(self)
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise MemlabError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        self.domain_sources()

    def domain_sources(self) -> dict[str, str]:
        """``--domains NAME=SOURCE`` (or a bare ``SOURCE``, named by itself) -> {name: source}."""
        out = {}
        for spec in self.domains:
            name, _, source = spec.partition("=") if "=" in spec else (spec, "", spec)
            if not name or not source:
                raise MemlabError(f"bad domain {spec!r}: write NAME=SOURCE, e.g. code=stdlib-code")
            if name in out:
                raise MemlabError(f"--domains names {name!r} twice")
            out[name] = source
        if len(out) < 2:
            raise MemlabError("the domains probe compares at least two corpora: give --domains NAME=SOURCE ...")
        return out
