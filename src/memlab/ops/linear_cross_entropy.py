"""The language-model head and its cross-entropy in one op, a block of rows at a time.

``F.cross_entropy(hidden @ weight.T, targets, reduction="sum")`` materialises the (N, V)
logits (400 MB at N = 2048 tokens, V = 50257) and autograd then makes three more passes over
tensors of that size (log-softmax, its backward, the gradient of the logits). Here the loss
is its own end: the gradient of the logits, ``softmax - onehot``, is known as soon as a block's
logits are, so the forward pass computes the gradients of ``hidden`` and ``weight`` block by
block in one reused (rows, V) buffer and the backward only scales them. The matmul FLOPs are
those of the plain head; what goes is the full-size memory traffic and page faults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from memlab.ops.precision import at_least_float32

BLOCK_BYTES = 128 * 2**20
"""largest size of the reused logits buffer: at most BLOCK_BYTES / (4 * V) rows per block, in equal blocks"""


def linear_cross_entropy_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T``, through the full logits (softmax in float32 at least)."""
    logits = hidden @ weight.t()  # (N, V)
    logits = logits.to(at_least_float32(logits.dtype))
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
    block_rows: int | None = None,
) -> torch.Tensor:
    """Summed cross-entropy over the rows whose target is not ``ignore_index``; equals the reference.

    hidden (N, D), weight (V, D), targets (N,) -> scalar. The logits are computed in the autocast
    dtype when autocast is on (as the plain head would be) and normalised in float32 at least.
    """
    if targets.shape != hidden.shape[:1]:  # (they had been paired by position, the rest dropped)
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)}")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    rows = _block_rows(hidden.shape[0], weight.shape[0], block_rows)
    grad_enabled = torch.is_grad_enabled()  # (inside forward it never is, and needs_input_grad ignores it)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, rows, dtype, grad_enabled)


@torch.no_grad()
def linear_token_nll(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
    block_rows: int | None = None,
) -> torch.Tensor:
    """The cross-entropy of each row, (N,) in float32 at least (0 where the target is
    ``ignore_index``): hidden (N, D), weight (V, D), targets (N,); for evaluation (no gradients), a
    block of rows' logits at a time (in the autocast dtype when autocast is on, normalised in
    float32 at least), never the (N, V) logits."""
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)}")
    rows = _block_rows(hidden.shape[0], weight.shape[0], block_rows)
    out = []
    for start in range(0, hidden.shape[0], rows):
        logits = F.linear(hidden[start : start + rows], weight)  # (n, V), under autocast as the head would be
        log_probs = logits.to(at_least_float32(logits.dtype)).log_softmax(-1)
        block = targets[start : start + rows]
        labelled = block != ignore_index
        nll = -log_probs.gather(1, block.masked_fill(~labelled, 0)[:, None]).squeeze(1)
        out.append(nll * labelled)
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=at_least_float32(hidden.dtype))


def _block_rows(n_rows: int, vocab_size: int, block_rows: int | None) -> int:
    """Rows per block: at most ``block_rows`` (default: a float32 block of BLOCK_BYTES), in equal blocks."""
    most = block_rows or max(1, BLOCK_BYTES // (4 * vocab_size))
    blocks = max(1, -(-n_rows // most))
    return max(1, -(-n_rows // blocks))  # equal blocks: no small, slow tail block


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, block_rows: int, dtype: torch.dtype,
                grad_enabled: bool):
        N, V = hidden.shape[0], weight.shape[0]
        h, w = hidden.to(dtype), weight.to(dtype)
        want_h, want_w = ctx.needs_input_grad[:2] if grad_enabled else (False, False)
        grad_h = torch.empty_like(hidden) if want_h else None
        softmax_dtype = at_least_float32(dtype)
        grad_w = None  # (V, D) in the softmax dtype, from the first block's product on
        logits = torch.empty(min(block_rows, N), V, dtype=dtype, device=hidden.device)  # the reused block
        loss = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
        for start in range(0, N, block_rows):
            rows = slice(start, min(start + block_rows, N))
            h_block, t_block = h[rows], targets[rows]
            block = torch.mm(h_block, w.t(), out=logits[: h_block.shape[0]])  # (n, V)
            log_probs = block.to(softmax_dtype)  # the block itself unless computing in 16 bits
            torch._log_softmax(log_probs, 1, False, out=log_probs)  # in place: one fused pass, no copy
            labelled = t_block != ignore_index
            safe_targets = t_block.masked_fill(~labelled, 0)
            target_log_probs = log_probs.gather(1, safe_targets[:, None])  # (n, 1)
            loss -= (target_log_probs.squeeze(1) * labelled).sum()
            if not (want_h or want_w):
                continue
            probs = log_probs.exp_()  # the gradient of the logits is softmax - onehot
            probs.scatter_(1, safe_targets[:, None], target_log_probs.exp_().sub_(1))
            probs.index_fill_(0, (~labelled).nonzero().squeeze(1), 0)  # ignored rows give nothing
            grad_block = probs.to(dtype)
            if want_h:
                grad_h[rows] = grad_block @ w
            if want_w:
                if grad_w is None:
                    grad_w = (grad_block.t() @ h_block).to(softmax_dtype)
                elif dtype == softmax_dtype:
                    grad_w.addmm_(grad_block.t(), h_block)
                else:
                    grad_w += (grad_block.t() @ h_block).to(softmax_dtype)
        if want_w and grad_w is None:  # no rows
            grad_w = torch.zeros_like(weight, dtype=softmax_dtype)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.used = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        if ctx.used:  # the gradients below are scaled in place: a second pass would scale them twice
            raise RuntimeError("linear_cross_entropy: backward can run once per forward (no retain_graph)")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        # the forward's gradients, scaled in place (the weight's cast back from the softmax dtype)
        dh = grad_h.mul_(grad_loss) if grad_h is not None else None
        dw = grad_w.mul_(grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None, None
