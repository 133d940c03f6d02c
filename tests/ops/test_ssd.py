"""The chunked SSD scan against the literal per-token recurrence: values, gradients, states."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memlab.ops.ssd import _chunk_length, ssd_chunked, ssd_naive, ssd_scan, ssd_step


def inputs(batch=2, T=37, H=4, P=8, G=2, N=6, dtype=torch.float64, seed=0, dt_shift=-1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(
        x=r(batch, T, H, P),
        dt=F.softplus(r(batch, T, H) + dt_shift),
        A=-torch.rand(H, generator=g, dtype=dtype) * 4 - 0.1,
        B=r(batch, T, G, N),
        C=r(batch, T, G, N),
        D=r(H),
        initial_state=r(batch, H, P, N),
    )


def assert_chunked_matches_naive(args: dict, chunk: int, use_final_state: bool = True) -> None:
    """Outputs, final state and the gradients of every input agree with the per-token loop
    (inputs given as None are left out; without ``use_final_state`` only the outputs are used)."""
    args = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in args.items()}
    y_ref, s_ref = ssd_naive(**args, output_final_state=True)
    y, s = ssd_chunked(**args, output_final_state=use_final_state, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref)
    if use_final_state:
        torch.testing.assert_close(s, s_ref)
    g = torch.Generator().manual_seed(1)
    dy, ds = torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(s_ref.shape, generator=g, dtype=y.dtype)
    names = [n for n, v in args.items() if v is not None]
    loss_ref, loss = (y_ref * dy).sum(), (y * dy).sum()
    if use_final_state:
        loss_ref, loss = loss_ref + (s_ref * ds).sum(), loss + (s * ds).sum()
    grads_ref = torch.autograd.grad(loss_ref, [args[n] for n in names])
    grads = torch.autograd.grad(loss, [args[n] for n in names])
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("T,chunk", [(1, 16), (17, 16), (63, 16), (64, 16), (65, 16), (150, 64)])
@pytest.mark.parametrize("groups", [1, 2])
def test_chunked_equals_naive_values_and_gradients(T, chunk, groups):
    assert_chunked_matches_naive(inputs(T=T, G=groups), chunk)


@pytest.mark.parametrize("left_out", ["initial_state", "D", "final_state"])
@pytest.mark.parametrize("groups", [1, 2])
def test_gradients_without_an_initial_state_a_skip_or_the_final_state(left_out, groups):
    args = inputs(T=70, G=groups)
    if left_out == "final_state":
        assert_chunked_matches_naive(args, 16, use_final_state=False)
    else:
        assert_chunked_matches_naive({**args, left_out: None}, 16)


@pytest.mark.parametrize("groups", [1, 2])
def test_chunks_are_halved_where_the_decay_spans_too_far_and_stay_exact(groups):
    """Log-decays of -8 per token on average (-19 at most): a chunk of 64 would span ~700, past
    the factorised form's float range, so the scan works in chunks of 8; one token decaying by
    1000 leaves chunks of a single token."""
    args = inputs(T=90, G=groups, dt_shift=3.0)
    log_decay = args["dt"] * args["A"]
    assert _chunk_length(log_decay, 64) < 16
    assert_chunked_matches_naive(args, 64)
    args["dt"][0, 40, 0] = 1000.0 / -args["A"][0]
    assert _chunk_length(args["dt"] * args["A"], 64) == 1
    assert_chunked_matches_naive(args, 64)


def test_float32_at_the_largest_span_a_chunk_keeps_is_accurate():
    """Decays of ~1.7 per token: chunks of 64 span ~110, just inside the limit, so the
    factorised form's scalings reach ~e^55 either way; values and gradients in float32 must
    still match the float64 loop."""
    args = inputs(batch=2, T=256, H=4, P=8, G=2, N=6)
    g = torch.Generator().manual_seed(2)
    args["A"] = -torch.ones(4, dtype=torch.float64)
    args["dt"] = 1.6 + 0.2 * torch.rand(args["dt"].shape, generator=g, dtype=torch.float64)
    assert _chunk_length(args["dt"] * args["A"], 64) == 64
    ref = {k: v.clone().requires_grad_() for k, v in args.items()}
    f32 = {k: v.float().requires_grad_() for k, v in args.items()}
    y_ref, s_ref = ssd_naive(**ref, output_final_state=True)
    y, s = ssd_chunked(**f32, output_final_state=True, chunk_size=64)
    dy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    ((y_ref * dy).sum() + s_ref.sum()).backward()
    ((y * dy.float()).sum() + s.sum()).backward()
    for name, a, b in [("y", y, y_ref), ("state", s, s_ref)] + [(k, f32[k].grad, ref[k].grad) for k in args]:
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=name)


def test_a_skip_weight_per_channel_matches_the_loop():
    args = inputs(T=40)
    args["D"] = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # (H, P)
    assert_chunked_matches_naive(args, 16)


def test_an_empty_sequence_keeps_the_state():
    args = inputs(T=0)
    args["initial_state"].requires_grad_()
    y, final = ssd_chunked(**args, output_final_state=True, chunk_size=16)
    assert y.shape == args["x"].shape
    torch.testing.assert_close(final, args["initial_state"])
    final.sum().backward()
    torch.testing.assert_close(args["initial_state"].grad, torch.ones_like(final))


def test_head_major_inputs_and_an_output_changed_in_place():
    """x stored (B, H, T, P) and seen through a transposed view; the output multiplied in place
    before the backward (it is not a view made inside the autograd Function)."""
    args = inputs(T=32)
    x = args["x"].transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    y, _ = ssd_chunked(**{**args, "x": x}, chunk_size=16)
    x_ref = args["x"].clone().requires_grad_()
    y_ref, _ = ssd_naive(**{**args, "x": x_ref})
    torch.testing.assert_close(y, y_ref)
    y.mul_(2).sum().backward()
    (2 * y_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_weak_decays_keep_the_whole_chunk():
    args = inputs(T=200, dt_shift=-3.0)
    assert _chunk_length(args["dt"] * args["A"], 64) == 64
    assert _chunk_length(args["dt"] * args["A"], 256) == 200


def test_prefill_in_two_halves_equals_one_call():
    args = inputs(T=100)
    full, final = ssd_chunked(**args, output_final_state=True, chunk_size=16)
    first = {k: (v[:, :43] if k not in ("A", "D", "initial_state") else v) for k, v in args.items()}
    second = {k: (v[:, 43:] if k not in ("A", "D", "initial_state") else v) for k, v in args.items()}
    y1, s1 = ssd_chunked(**first, output_final_state=True, chunk_size=16)
    second["initial_state"] = s1
    y2, s2 = ssd_chunked(**second, output_final_state=True, chunk_size=16)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), full)
    torch.testing.assert_close(s2, final)


def test_decode_steps_continue_a_chunked_prefill():
    args = inputs(T=30)
    full, _ = ssd_chunked(**args, chunk_size=8)
    prefix = {k: (v[:, :25] if k not in ("A", "D", "initial_state") else v) for k, v in args.items()}
    _, state = ssd_chunked(**prefix, output_final_state=True, chunk_size=8)
    for t in range(25, 30):
        state, y = ssd_step(args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t], args["D"], state)
        torch.testing.assert_close(y, full[:, t])


def test_no_initial_state_is_a_zero_state():
    args = inputs(T=20)
    zero = torch.zeros_like(args["initial_state"])
    a, _ = ssd_chunked(**{**args, "initial_state": None}, chunk_size=8)
    b, _ = ssd_chunked(**{**args, "initial_state": zero}, chunk_size=8)
    torch.testing.assert_close(a, b)


def test_long_sequence_with_strong_decay_is_accurate_in_float32():
    """Cumulative log-decays reach about -3000 here; passing states across chunks must stay exact."""
    args = inputs(batch=1, T=600, H=2, P=4, G=1, N=4, dt_shift=2.0)
    y_ref, s_ref = ssd_naive(**args, output_final_state=True)
    args32 = {k: v.float().requires_grad_() for k, v in args.items()}
    y, s = ssd_chunked(**args32, output_final_state=True, chunk_size=64)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)
    (y.sum() + s.sum()).backward()
    assert all(torch.isfinite(v.grad).all() for v in args32.values())


def test_scan_dispatches_to_the_pure_path_on_cpu():
    args = inputs(T=40)
    a, sa = ssd_scan(**args, output_final_state=True, chunk_size=16)
    b, sb = ssd_chunked(**args, output_final_state=True, chunk_size=16)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(sa, sb, atol=0, rtol=0)
    assert ssd_scan(**args)[1] is None


def test_bad_shapes_are_rejected():
    args = inputs(T=10, H=4, G=3)
    with pytest.raises(ValueError, match="groups"):
        ssd_chunked(**args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mamba_ssm_kernel_matches_the_pure_path():
    pytest.importorskip("mamba_ssm")
    args = {k: v.float().cuda() for k, v in inputs(batch=2, T=300, H=4, P=64, G=1, N=64).items()}
    y, s = ssd_scan(**args, output_final_state=True, chunk_size=64)
    y_ref, s_ref = ssd_chunked(**args, output_final_state=True, chunk_size=64)
    for fused, ours in ((y, y_ref), (s, s_ref)):  # relative RMS error: the Triton kernel may use TF32 matmuls
        assert (fused - ours).norm() / ours.norm() < 5e-3
    exact = {k: v.double() for k, v in args.items()}  # float64 stays on the pure path, exact
    y64, s64 = ssd_scan(**exact, output_final_state=True, chunk_size=64)
    torch.testing.assert_close((y64, s64), ssd_naive(**exact, output_final_state=True), atol=1e-10, rtol=1e-10)
