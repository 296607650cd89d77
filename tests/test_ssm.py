"""Recurrent ops and state: the references, their chunked forms, state carried across calls, and a
session's state (fork, reset, free, size independent of the context)."""

import numpy as np
import pytest

from rocmforge.backends.numpy_backend import NumpyBackend
from rocmforge.backends.numpy_ssm import conv1d_ref, softplus, ssd_chunked, ssd_ref

be = NumpyBackend()
rng = np.random.default_rng(0)


def _r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_conv1d_is_the_causal_convolution_and_carries_its_tail():
    T, C, K = 9, 5, 4
    x, w, b = _r(T, C), _r(C, K), _r(C)
    # the definition: zero history, y[t] = b + sum_k w[k] x[t - (K-1) + k]
    pad = np.concatenate([np.zeros((K - 1, C), np.float32), x])
    want = np.stack([b + sum(w[:, k] * pad[t + k] for k in range(K)) for t in range(T)])
    state = np.zeros((K - 1, C), np.float32)
    np.testing.assert_allclose(be.conv1d_causal(x, w, b, state), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(state, x[-(K - 1):])
    # in two calls (a prefill, then decode steps) == in one
    s2 = np.zeros_like(state)
    parts = [be.conv1d_causal(x[:4], w, b, s2)] + [be.conv1d_causal(x[t:t + 1], w, b, s2) for t in range(4, T)]
    np.testing.assert_allclose(np.concatenate(parts), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s2, state)


def test_conv1d_shorter_than_the_kernel():
    x, w = _r(2, 3), _r(3, 4)
    state = _r(3, 3)
    xin = np.concatenate([state, x])
    want = np.stack([sum(w[:, k] * xin[t + k] for k in range(4)) for t in range(2)])
    np.testing.assert_allclose(conv1d_ref(x, w, None, state), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(state, xin[-3:])


def test_selective_scan_in_pieces_equals_one_call():
    T, Dc, N = 11, 6, 4
    x, dt, B, C = _r(T, Dc), _r(T, Dc), _r(T, N), _r(T, N)
    A, D, bias = -np.exp(_r(Dc, N)), _r(Dc), _r(Dc)
    h = np.zeros((Dc, N), np.float32)
    full = be.selective_scan(x, dt, A, B, C, D, h, bias)
    # one step by hand: the recurrence as written in the paper
    h1 = np.zeros((Dc, N), np.float32)
    delta = softplus(dt[0] + bias)
    h1 = np.exp(delta[:, None] * A) * h1 + (delta * x[0])[:, None] * B[0]
    np.testing.assert_allclose(full[0], h1 @ C[0] + D * x[0], rtol=1e-5, atol=1e-6)
    h2 = np.zeros_like(h)
    parts = [be.selective_scan(x[:5], dt[:5], A, B[:5], C[:5], D, h2, bias)]
    parts += [be.selective_scan(x[t:t + 1], dt[t:t + 1], A, B[t:t + 1], C[t:t + 1], D, h2, bias) for t in range(5, T)]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h2, h, rtol=1e-5, atol=1e-6)


def _ssd_inputs(T, H=6, P=4, G=3, N=5):
    return (_r(T, H, P), np.abs(_r(T, H, scale=0.5)), -np.exp(_r(H)), _r(T, G, N), _r(T, G, N), _r(H),
            _r(H, P, N))


@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (16, 4), (37, 8), (130, 64)])
def test_ssd_chunked_equals_the_loop(T, chunk):
    x, delta, A, B, C, D, h0 = _ssd_inputs(T)
    h_loop, h_chunk = h0.copy(), h0.copy()
    want = ssd_ref(x, delta, A, B, C, D, h_loop)
    got = ssd_chunked(x, delta, A, B, C, D, h_chunk, chunk=chunk)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(h_chunk, h_loop, rtol=2e-4, atol=2e-5)


def test_ssd_scan_heads_read_their_group_and_clip_dt():
    T, H, P, G, N = 6, 4, 3, 2, 5
    x, dt, B, C = _r(T, H, P), _r(T, H), _r(T, G, N), _r(T, G, N)
    A, D, bias = -np.exp(_r(H)), _r(H), _r(H)
    h = np.zeros((H, P, N), np.float32)
    y = be.ssd_scan(x, dt, A, B, C, D, h, bias, 0.0, 0.3)
    # head 3 alone, through the Mamba-1 scan with its group's B and C (A the same for every state)
    delta = np.clip(softplus(dt[:, 3] + bias[3]), 0.0, 0.3)
    h1 = np.zeros((P, N), np.float32)
    for t in range(T):
        h1 = np.exp(delta[t] * A[3]) * h1 + delta[t] * np.outer(x[t, 3], B[t, 1])
        np.testing.assert_allclose(y[t, 3], h1 @ C[t, 1] + D[3] * x[t, 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h[3], h1, rtol=1e-5, atol=1e-6)


def test_ssd_scan_long_prompt_runs_chunked_and_continues():
    x, dt, A, B, C, D, _ = _ssd_inputs(150)
    bias = _r(6)
    h_a, h_b = np.zeros((6, 4, 5), np.float32), np.zeros((6, 4, 5), np.float32)
    full = be.ssd_scan(x, dt, A, B, C, D, h_a, bias)                 # > SSD_CHUNK rows: the chunked form
    parts = [be.ssd_scan(x[:100], dt[:100], A, B[:100], C[:100], D, h_b, bias)]
    parts += [be.ssd_scan(x[t:t + 1], dt[t:t + 1], A, B[t:t + 1], C[t:t + 1], D, h_b, bias) for t in range(100, 150)]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=2e-4, atol=2e-5)


def test_rms_norm_gated_normalises_each_group():
    x, z, w = _r(3, 8), _r(3, 8), _r(8)
    g = x * z / (1 + np.exp(-z))
    gg = g.reshape(3, 2, 4)
    want = (gg / np.sqrt((gg ** 2).mean(-1, keepdims=True) + 1e-5)).reshape(3, 8) * w
    np.testing.assert_allclose(be.rms_norm_gated(x, z, w, 4, 1e-5), want, rtol=1e-5, atol=1e-6)


# ---- a session's recurrent state

@pytest.fixture(scope="module")
def mamba(tmp_path_factory):
    pytest.importorskip("transformers")
    from rocmforge import load_model
    from rocmforge.registry import architectures
    from rocmforge.testing.tiny import make_hf_model

    tiny = architectures()["mamba"].recipe_obj.tiny[0]
    folder = make_hf_model(tiny["hf_class"], tiny["config"], tmp_path_factory.mktemp("mamba") / "hf", seed=3)
    return load_model(str(folder), tokenizer=False)


def test_state_is_allocated_with_the_session_and_independent_of_context(mamba):
    a, b = mamba.new_session(16), mamba.new_session(4096)
    assert a.state is not None and a.state.nbytes == b.state.nbytes > 0
    assert a.state.layers() == [0, 1]
    hp = mamba.hparams
    assert a.state.get(0, "conv").shape == (hp["d_conv"] - 1, hp["d_inner"])
    assert a.state.get(1, "ssm").shape == (hp["d_inner"], hp["d_state"])
    a.feed([1, 2, 3])
    assert np.abs(a.state.get(0, "ssm")).sum() > 0 and np.abs(b.state.get(0, "ssm")).sum() == 0


def test_fork_copies_and_reset_starts_over(mamba):
    s = mamba.new_session(64)
    s.feed([5, 6, 7, 8])
    f = s.fork()
    want = s.feed([9, 10])
    np.testing.assert_array_equal(f.feed([9, 10]), want)       # the fork continues from the same state
    f.feed([11])                                               # ... and moves on alone
    np.testing.assert_allclose(s.feed([12]), mamba.new_session(64).feed([5, 6, 7, 8, 9, 10, 12]), rtol=1e-4, atol=1e-5)
    s.reset()
    assert s.n_past == 0 and np.abs(s.state.get(1, "conv")).sum() == 0
    np.testing.assert_array_equal(s.feed([1, 2]), mamba.new_session(64).feed([1, 2]))
    s.close()
    assert s.cache is None


def test_paged_model_step_gives_each_sequence_its_state(mamba):
    """The serving engine's model step: prefill chunk then decodes through paged views == the full forward
    (tests/engine/test_recurrent_engine.py drives the whole engine)."""
    from rocmforge.engine.model_step import ModelStep, StepItem

    ids = [5, 6, 7, 8, 9, 10, 12]
    step = ModelStep(mamba, num_blocks=8, block_size=4)
    rows = [step.run([StepItem("s", ids[:4], 0, [3, 1], all_rows=True)])[0]]
    rows += [step.run([StepItem("s", [t], p, [3, 1])])[0][None] for p, t in enumerate(ids[4:], 4)]
    np.testing.assert_allclose(np.concatenate(rows), mamba.logits(ids), rtol=1e-4, atol=1e-5)
    assert step.num_states == 1
    step.release("s")
    assert step.num_states == 0
