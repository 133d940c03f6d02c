"""The mixer contract: one surface for every sequence mixer.

* ``forward(x, state=None) -> y`` with ``x, y: (B, T, D)``.  ``state=None`` is the
  parallel (training) form; with a state the mixer consumes the ``T`` new tokens and
  updates the state in place, so prefill and decode are the same call.
* ``init_state(batch_size, device, dtype)`` returns the layer's :class:`MixerState`;
  ``state.nbytes`` is exact and ``state_nbytes(context_len)`` predicts it: the bytes of what the
  state holds (a fixed buffer — ring, delta matrix, slots — whole; a growing KV cache its filled
  part, not the spare capacity its geometric growth allocates ahead).
* Ablations, set through :func:`memlab.ablate` (never by re-implementing a forward):
  ``zero`` replaces the memory read-out by zeros (mixers with ``carries_memory``);
  ``horizon=h`` limits every position to the last ``h`` tokens (itself included).
  Mixers without a native horizon form get the exact generic one: each position is
  recomputed from its own window of ``h`` tokens.
* ``aux_loss(valid)`` returns named auxiliary losses (already weighted) of the last forward,
  averaged over the positions ``valid`` (B, T) marks as real tokens (None: all; padding is not);
  ``diagnostics()`` returns named float statistics of the last forward.
* Optionally (``mixes_rows``), a forward at some positions only: ``x: (N, D)`` holds the inputs
  at the :class:`Rows` of a (B, T) batch, and the state from ``init_row_state()`` keeps what the
  other positions left in earlier such forwards (ACT runs only its running positions this way).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar, Literal

import torch
from torch import nn

from memlab.config import ModelConfig
from memlab.errors import MemlabError


@dataclass
class Ablation:
    """A memory ablation applied to a mixer."""

    mode: Literal["zero", "horizon"]
    horizon: int | None = None

    def __post_init__(self) -> None:
        whole = isinstance(self.horizon, numbers.Integral) and not isinstance(self.horizon, bool)
        if self.mode == "horizon" and not (whole and self.horizon >= 1):
            raise ValueError(f"horizon ablation needs a whole number of tokens >= 1, got {self.horizon!r}")
        if self.mode == "zero" and self.horizon is not None:  # (it had been ignored)
            raise ValueError(f"a zero ablation takes no horizon, got {self.horizon!r}")


class MixerState:
    """A layer's recurrent state.  Subclasses are dataclasses whose tensor fields are the state."""

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out.append(value)
            elif isinstance(value, MixerState):
                out.extend(value.tensors())
        return out

    @property
    def nbytes(self) -> int:
        """Bytes this state holds for the whole batch (its tensors; a growing cache counts its filled part)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


@dataclass
class Rows:
    """Some positions of a (B, T) batch, for work at those positions alone: N rows, row i at
    ``(batch[i], position[i])`` in row-major order, and ``slot[i]`` its index among its batch
    entry's rows (at most ``n_slots`` of them).  When they are all the positions (``full``),
    gathering and packing are reshapes."""

    batch: torch.Tensor  # (N,)
    position: torch.Tensor  # (N,)
    slot: torch.Tensor  # (N,)
    shape: tuple[int, int]  # (B, T)
    n_slots: int

    @classmethod
    def of(cls, mask: torch.Tensor) -> Rows:
        """The positions ``mask (B, T)`` marks."""
        batch, position = mask.nonzero(as_tuple=True)
        counts = mask.sum(1)
        first = counts.cumsum(0) - counts  # (B,) index of each batch entry's first row
        slot = torch.arange(batch.numel(), device=mask.device) - first[batch]
        return cls(batch, position, slot, tuple(mask.shape), int(counts.max()))

    @property
    def full(self) -> bool:
        return self.batch.numel() == self.shape[0] * self.shape[1]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...)"""
        return t.flatten(0, 1) if self.full else t[self.batch, self.position]

    def scatter(self, t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``t (B, T, ...)`` with the rows replaced by ``values (N, ...)`` (a new tensor, or a view
        of ``values`` when the rows are full)."""
        return values.reshape(t.shape) if self.full else t.index_put((self.batch, self.position), values)

    def pack(self, values: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(N, ...) -> (B, n_slots, ...), ``fill`` in the slots no row takes."""
        if self.full:
            return values.reshape(*self.shape, *values.shape[1:])
        out = values.new_full((self.shape[0], self.n_slots, *values.shape[1:]), fill)
        return out.index_put((self.batch, self.slot), values)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(B, n_slots, ...) -> (N, ...)"""
        return packed.flatten(0, 1) if self.full else packed[self.batch, self.slot]


class Mixer(nn.Module):
    """Base class of every sequence mixer; subclasses implement :meth:`mix`."""

    letter: ClassVar[str] = "?"
    carries_memory: ClassVar[bool] = False  # True: has a read-out that the 'zero' ablation removes
    native_horizon: ClassVar[bool] = False  # True: mix() honours a horizon ablation itself
    mixes_rows: ClassVar[bool] = False  # True: mix() runs at Rows with the state of init_row_state()
    options_section: ClassVar[str | None] = None  # the ModelConfig section of its own options (gdn, cdm, ssm)

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.ablation: Ablation | None = None

    # ---------------------------------------------------------------- contract
    def mix(self, x: torch.Tensor, state: MixerState | None) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> MixerState:
        raise NotImplementedError

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        """Bytes of this layer's state after ``context_len`` tokens (analytic; tested against nbytes)."""
        raise NotImplementedError

    def init_row_state(self) -> MixerState:
        """An empty state for forwards at rows (mixers with ``mixes_rows``)."""
        raise NotImplementedError(f"{type(self).__name__} has no forward at rows")

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token beyond the 6 x parameters of the matmuls (e.g. attention scores)."""
        return 0.0

    def aux_loss(self, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """Statistics of the last forward, over the positions ``valid (B, T)`` marks real (None: all)."""
        return {}

    def bind(self, previous: list[Mixer]) -> None:
        """Called once by the model with the mixers of the layers before this one."""

    def borrowed(self) -> list[Mixer]:
        """Other layers whose weights this layer's forward uses (FSDP shards them together)."""
        return []

    def init_special_parameters(self) -> None:
        """Re-apply parameter initialisations that the model's generic init overwrote."""

    # ---------------------------------------------------------------- helpers
    @property
    def zeroed(self) -> bool:
        """Whether the memory read-out must be replaced by zeros (the 'zero' ablation)."""
        return self.carries_memory and self.ablation is not None and self.ablation.mode == "zero"

    @property
    def horizon(self) -> int | None:
        a = self.ablation
        return a.horizon if a is not None and a.mode == "horizon" else None

    def forward(self, x: torch.Tensor, state: MixerState | None = None) -> torch.Tensor:
        h = self.horizon
        if h is not None and not self.native_horizon:
            if state is not None:
                raise MemlabError(
                    f"{type(self).__name__} has no recurrent form under a horizon ablation; "
                    "run the parallel form (state=None)"
                )
            return self._forward_windows(x, h)
        return self.mix(x, state)

    def _forward_windows(self, x: torch.Tensor, h: int) -> torch.Tensor:
        """Exact horizon ablation: position t sees only x[t-h+1 .. t].  (B, T, D) -> (B, T, D)."""
        return last_of_windows(x, h, lambda window: self.mix(window, None))


def last_of_windows(
    x: torch.Tensor, h: int, run: Callable[[torch.Tensor], torch.Tensor], max_tokens: int = 1 << 16
) -> torch.Tensor:
    """Output t of ``run`` applied to the window ``x[:, t-h+1 .. t]`` alone, for every t.

    ``run`` maps (n, L, C) -> (n, L, D) causally; positions < h see their whole prefix (one call),
    the others are batched windows of h, ``max_tokens`` tokens per call.  (B, T, C) -> (B, T, D)
    """
    B, T, C = x.shape
    head = run(x[:, :h])
    if T <= h:
        return head
    windows = x.unfold(1, h, 1).permute(0, 1, 3, 2)[:, 1:].reshape(-1, h, C)  # windows ending at h..T-1
    per_call = max(1, max_tokens // h)
    tails = [run(windows[i : i + per_call])[:, -1] for i in range(0, windows.shape[0], per_call)]
    return torch.cat([head, torch.cat(tails).view(B, T - h, -1)], dim=1)


def real_positions(t: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``t (B, T, ...)`` -> (N, ...): its positions that ``valid (B, T)`` marks real (None: all)."""
    return t.flatten(0, 1) if valid is None else t[valid]


class LastForward(SimpleNamespace):
    """What a module keeps of its last forward (tensors attached to the autograd graph, for its
    auxiliary losses, diagnostics or a reader layer).  Such tensors cannot be deep-copied, so a
    copy of the module (an EMA or best-model snapshot) starts with every field None."""

    def __deepcopy__(self, memo) -> LastForward:
        return LastForward(**dict.fromkeys(vars(self)))
