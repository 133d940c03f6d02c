"""Memory ablation of a whole model through the mixer contract."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from memlab.errors import MemlabError
from memlab.mixers import Ablation, Mixer


@contextmanager
def ablate(
    model: nn.Module, mode: str = "zero", horizon: int | None = None, layers: list[int] | None = None
) -> Iterator[list[int]]:
    """Ablate memory inside the ``with`` block; yields the indices of the ablated layers.

    ``mode="horizon"`` limits every mixer to the last ``horizon`` tokens.  ``layers`` restricts
    the ablation to those layer indices.  ``mode="zero"`` zeroes the memory read-out of every
    memory-carrying mixer; what that removes depends on the mixer (pattern letter), and in every
    one the state is still written (decoding goes on as without the ablation):

    * ``G`` Gated DeltaNet, ``D`` DeltaNet: the layer's whole output (its state read and, with it,
      the short convolution and output gate on that path).  Zeroing such a layer alone leaves a
      ``W`` layer that reads its state reading it still: zero both (``layers=None`` does) to
      remove that memory from the model.
    * ``W`` state-read window (``gdn.state_read``): only its read of the source layer's state; its
      sliding-window attention stays.  Without ``state_read`` it carries no memory.
    * ``M`` Mamba-2: the SSM state read-out; the ``D`` skip, the output gate and the short causal
      convolution (the last ``ssm.conv_size - 1`` inputs) remain, so a few tokens of context do.
    * ``C`` CDM: the slot read-out; ``K`` CDM hybrid: the slot read-out, its attention stays.
    * the ``latent`` variant's thought stream: its read-out of the thoughts.
    * ``A`` attention, ``S`` sliding-window attention, ``R`` memory tokens carry no memory to zero
      (their context is limited by ``horizon`` only): variants built of them alone (baseline,
      act, shared_loop) are left unchanged, and their Delta does not apply.
    """
    if mode not in ("zero", "horizon"):
        raise MemlabError(f"unknown ablation mode {mode!r}; valid choices: horizon, zero")
    try:
        ablation = Ablation(mode, horizon)  # type: ignore[arg-type]
    except ValueError as e:
        raise MemlabError(str(e)) from None
    mixers = [m for m in model.modules() if isinstance(m, Mixer)]
    eligible = [m for m in mixers if mode == "horizon" or m.carries_memory]
    if layers is not None:  # (an index that names no such layer had ablated nothing, without a word)
        valid = sorted({m.layer_idx for m in eligible})
        if not isinstance(layers, (list, tuple, set, range)):
            raise MemlabError(f"layers must be a list of layer indices, got {layers!r}; valid: {valid}")
        if unknown := sorted(set(layers) - set(valid)):
            raise MemlabError(f"layers {unknown} name no layer that mode {mode!r} can ablate; valid: {valid}")
    chosen = [m for m in eligible if layers is None or m.layer_idx in layers]
    previous = [m.ablation for m in chosen]
    for m in chosen:
        m.ablation = ablation
    try:
        yield sorted({m.layer_idx for m in chosen})
    finally:
        for m, p in zip(chosen, previous):
            m.ablation = p
