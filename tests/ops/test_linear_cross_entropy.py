"""The blockwise head + cross-entropy against the full-logits reference: values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import memlab
from memlab.errors import MemlabError
from memlab.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference, linear_token_nll


def _loss_and_grads(fn, hidden, weight, targets, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    (loss * 1.7).backward()  # a non-unit upstream gradient
    return loss, h.grad, w.grad


@pytest.mark.parametrize("n_rows, block_rows", [(0, 4), (1, 4), (13, 4), (13, 13), (40, 7), (40, 64)])
def test_matches_reference_with_ignored_rows(n_rows, block_rows):
    g = torch.Generator().manual_seed(n_rows)
    hidden = torch.randn(n_rows, 12, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 12, generator=g, dtype=torch.float64) * 3  # peaked softmax
    targets = torch.randint(0, 50, (n_rows,), generator=g)
    targets[1::3] = -100
    got = _loss_and_grads(linear_cross_entropy, hidden, weight, targets, block_rows=block_rows)
    want = _loss_and_grads(linear_cross_entropy_reference, hidden, weight, targets)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.to(a.dtype))


def test_large_vocabulary_float32_and_all_ignored():
    """The default block size at a GPT-2-sized vocabulary (several blocks, in-place log-softmax)."""
    hidden, weight = torch.randn(700, 16), torch.randn(50257, 16) * 0.5
    targets = torch.randint(0, 50257, (700,))
    got = _loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    want = _loss_and_grads(linear_cross_entropy_reference, hidden, weight, targets)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    loss, h_grad, w_grad = _loss_and_grads(linear_cross_entropy, hidden, weight, torch.full((700,), -100))
    assert loss.item() == 0 and not h_grad.any() and not w_grad.any()


def test_without_gradients_and_under_bf16_autocast():
    hidden, weight = torch.randn(30, 16), torch.randn(100, 16)
    targets = torch.randint(0, 100, (30,))
    with torch.no_grad():
        torch.testing.assert_close(
            linear_cross_entropy(hidden, weight, targets, block_rows=8),
            linear_cross_entropy_reference(hidden, weight, targets),
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _loss_and_grads(linear_cross_entropy, hidden, weight, targets, block_rows=8)
        want = _loss_and_grads(linear_cross_entropy_reference, hidden, weight, targets)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_)
        return func(*args, **(kwargs or {}))


def test_no_gradient_work_under_no_grad_even_for_trainable_weights():
    """Validation scores a model whose head weight requires grad: under no_grad the op computes the
    logits only (one matmul per block), not the gradients it would otherwise make in its forward."""
    hidden, weight = torch.randn(30, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
    targets = torch.randint(0, 100, (30,))
    with torch.no_grad(), _CountMatmuls() as counted:
        loss = linear_cross_entropy(hidden, weight, targets, block_rows=8)
    assert counted.count == 4 and not loss.requires_grad  # 4 blocks of at most 8 rows
    with _CountMatmuls() as counted:
        linear_cross_entropy(hidden, weight, targets, block_rows=8)
    assert counted.count == 4 * 3  # with gradients: logits, hidden's and weight's gradient per block


def test_model_loss_equals_cross_entropy_of_its_logits():
    """``model(ids, labels=...)``: the summed cross-entropy of ``model(ids)``, gradients included."""
    model = memlab.build_model("baseline", "tiny", vocab_size=64, n_layers=1)
    ids = torch.randint(0, 64, (2, 9))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    loss = model(ids, labels=labels)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(ids)
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    want.backward()
    torch.testing.assert_close(loss, want)
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6)


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.numel = max(self.numel, out.numel())
        return out


@pytest.mark.parametrize("n_rows, block_rows", [(0, 4), (1, 4), (13, 4), (40, 7), (40, 64)])
def test_each_rows_loss_equals_the_cross_entropy_of_the_full_logits(n_rows, block_rows):
    g = torch.Generator().manual_seed(n_rows)
    hidden = torch.randn(n_rows, 12, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 12, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 50, (n_rows,), generator=g)
    targets[1::3] = -100  # ignored: 0, as the summed loss leaves them out
    want = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="none")
    with _LargestOutput() as largest:
        got = linear_token_nll(hidden, weight, targets, block_rows=block_rows)
    torch.testing.assert_close(got, want)
    if block_rows < n_rows:  # a block's logits at a time, never all of them
        assert largest.numel < n_rows * 50


def test_the_models_per_position_loss_sums_to_its_loss():
    """``model(ids, labels=..., reduction="none")`` (the lm suite's) against the logits' cross-entropy."""
    model = memlab.build_model("baseline", "tiny", vocab_size=64, n_layers=1).eval()
    ids = torch.randint(0, 64, (2, 9))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100  # (as training labels them: it had been an index error, on CUDA a device assert)
    with torch.no_grad():
        each = model(ids, labels=labels, reduction="none")
        want = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), reduction="none")
        total = model(ids, labels=labels)
    assert each.shape == (2, 9)
    torch.testing.assert_close(each.flatten(), want)
    torch.testing.assert_close(each.sum(), total)
    for wrong in (dict(labels=ids, reduction="mean"), dict(reduction="none")):  # (without labels it had been ignored)
        with pytest.raises(MemlabError, match="reduction must be 'sum' or 'none' \\(with labels\\)"):
            model(ids, **wrong)


def test_a_second_backward_is_refused():
    """The gradients are scaled in place, so retain_graph cannot reuse them."""
    h = torch.randn(5, 4, requires_grad=True)
    loss = linear_cross_entropy(h, torch.randn(7, 4), torch.randint(0, 7, (5,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward can run once"):
        loss.backward()


def test_frozen_head_gives_only_the_hidden_gradient():
    hidden, weight = torch.randn(9, 6, dtype=torch.float64), torch.randn(11, 6, dtype=torch.float64)
    targets = torch.randint(0, 11, (9,))
    a, b = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    linear_cross_entropy(a, weight, targets, block_rows=4).backward()
    linear_cross_entropy_reference(b, weight, targets).backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert weight.grad is None


def test_targets_of_another_length_are_refused():
    """They had been paired with the rows by position, the rest dropped: a silently wrong loss."""
    hidden, weight = torch.randn(8, 4), torch.randn(10, 4)
    for targets in (torch.zeros(6, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)):
        with pytest.raises(ValueError, match="do not match hidden"):
            linear_cross_entropy(hidden, weight, targets)
