"""Attention and sliding-window attention: the KV cache, the ring buffer, GQA, the horizon mask."""

from __future__ import annotations

import pytest
import torch

import memlab


def model_with(pattern: str, **overrides):
    torch.manual_seed(0)
    return memlab.build_model("baseline", "tiny", layer_pattern=pattern, **overrides).eval()


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("pattern", ["A", "S", "AS"])
def test_decode_in_uneven_chunks_equals_parallel(pattern, kv_heads):
    model = model_with(pattern, n_kv_heads=kv_heads, **{"attention.window": 8})
    x = torch.randint(0, 512, (2, 45))
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        parts = [model(x[:, a:b], state) for a, b in [(0, 3), (3, 20), (20, 21), (21, 30), (30, 45)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_sliding_window_sees_exactly_window_tokens():
    model = model_with("S", attention={"window": 8}, n_layers=1)
    x = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        full = model(x)
        # a 1-layer window-8 model at position t depends on x[t-7 .. t] only
        torch.testing.assert_close(model(x[:, 32:40])[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
        y = x.clone()
        y[:, 32] = (y[:, 32] + 1) % 512
        assert not torch.allclose(model(y)[:, -1], full[:, -1])


def test_ring_buffer_state_is_constant_size():
    model = model_with("S")
    window = model.config.attention.window
    state = model.init_state(1)
    sizes = []
    with torch.no_grad():
        for length in (5, window, 3 * window):
            model(torch.randint(0, 512, (1, length)), state)
            sizes.append(state.nbytes)
    assert len(set(sizes)) == 1 and sizes[0] == model.state_nbytes(10_000)


@pytest.mark.parametrize("pattern, lengths", [("A", (10, 1, 1, 1)), ("S", (5,)), ("S", (5, 9, 1))])
def test_the_state_carries_the_bytes_state_nbytes_predicts(pattern, lengths):
    """A KV cache counts its filled part (its buffer grows geometrically); a ring buffer is the whole
    window from the first token."""
    model = model_with(pattern, n_layers=1, **{"attention.window": 8})
    state = model.init_state(1)
    with torch.no_grad():
        for n in lengths:
            model(torch.randint(0, 512, (1, n)), state)
    assert state.nbytes == model.state_nbytes(sum(lengths))
    if pattern == "A":
        assert state.layers[0].k.shape[2] > sum(lengths)  # the buffer holds more than the sequence


@pytest.mark.parametrize("pattern, window, seq_len", [("A", None, 50), ("S", 8, 50), ("S", 64, 50)])
def test_attention_flops_count_the_keys_each_query_attends(pattern, window, seq_len):
    """12 FLOPs per head dimension per (query, key) pair the causal (windowed) mask lets through."""
    model = model_with(pattern, n_layers=1, **({"attention.window": window} if window else {}))
    mixer = model.body.blocks[0].mixer
    i, j = torch.arange(seq_len)[:, None], torch.arange(seq_len)[None, :]
    visible = (j <= i) & (i - j < (window or seq_len))  # query i sees keys i - window + 1 .. i
    pairs_per_token = visible.sum().item() / seq_len
    expected = 12.0 * mixer.n_heads * mixer.head_dim * pairs_per_token
    assert mixer.extra_flops_per_token(seq_len) == pytest.approx(expected, rel=1e-12)


def test_horizon_is_honoured_while_decoding():
    model = model_with("A")
    x = torch.randint(0, 512, (1, 30))
    with torch.no_grad(), memlab.ablate(model, mode="horizon", horizon=5):
        full = model(x)
        state = model.init_state(1)
        steps = [model(x[:, :11], state)] + [model(x[:, t : t + 1], state) for t in range(11, 30)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_gqa_has_fewer_kv_parameters_and_smaller_cache():
    full, grouped = model_with("A"), model_with("A", n_kv_heads=1)
    assert grouped.num_params() < full.num_params()
    assert grouped.state_nbytes(100) * 4 == full.state_nbytes(100)
