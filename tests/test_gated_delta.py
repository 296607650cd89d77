"""Gated DeltaNet's gated delta rule: the loop is the paper's recurrence, the chunked form equals the
loop, state carries across calls (prefill, then decode steps), and the backend method equals
transformers' own reference functions (grouped value heads, L2-normalised q/k, beta and g)."""

import numpy as np
import pytest

from rocmforge.backends.numpy_backend import NumpyBackend
from rocmforge.backends.numpy_delta import (
    expand_heads,
    gated_delta_rule_chunked,
    gated_delta_rule_ref,
    l2norm,
)

be = NumpyBackend()
rng = np.random.default_rng(0)


def _r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _rule_inputs(T, H=3, dk=8, dv=6):
    q, k = l2norm(_r(T, H, dk)) * np.float32(dk ** -0.5), l2norm(_r(T, H, dk))
    g = -np.abs(_r(T, H, scale=0.3))                     # log decay <= 0
    beta = 1 / (1 + np.exp(-_r(T, H)))
    return q, k, _r(T, H, dv), g.astype(np.float32), beta.astype(np.float32), _r(H, dk, dv)


def test_the_loop_is_the_papers_recurrence():
    q, k, v, g, beta, S0 = _rule_inputs(5)
    S = S0.copy()
    o = gated_delta_rule_ref(q, k, v, g, beta, S)
    # S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T;  o_t = S_t^T q_t   (per head)
    for h in range(q.shape[1]):
        s = S0[h].astype(np.float64)
        for t in range(q.shape[0]):
            kk = k[t, h].astype(np.float64)
            s = np.exp(g[t, h]) * (np.eye(len(kk)) - beta[t, h] * np.outer(kk, kk)) @ s + beta[t, h] * np.outer(kk, v[t, h])
            np.testing.assert_allclose(o[t, h], s.T @ q[t, h], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(S[h], s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (16, 4), (37, 8), (130, 64)])
def test_chunked_equals_the_loop(T, chunk):
    q, k, v, g, beta, S0 = _rule_inputs(T)
    S_loop, S_chunk = S0.copy(), S0.copy()
    want = gated_delta_rule_ref(q, k, v, g, beta, S_loop)
    got = gated_delta_rule_chunked(q, k, v, g, beta, S_chunk, chunk=chunk)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(S_chunk, S_loop, rtol=1e-4, atol=1e-5)


def _net_inputs(T, Hk=2, Hv=4, dk=8, dv=6):
    return (_r(T, Hk, dk), _r(T, Hk, dk), _r(T, Hv, dv), _r(T, Hv), _r(T, Hv), -np.exp(_r(Hv)), _r(Hv))


def test_prefill_then_decode_equals_one_call_and_long_prompts_run_chunked():
    q, k, v, a, b, A, dtb = _net_inputs(150)            # > GDN_CHUNK rows: the chunked form
    S_full, S_parts = np.zeros((4, 8, 6), np.float32), np.zeros((4, 8, 6), np.float32)
    full = be.gated_delta_net(q, k, v, a, b, A, dtb, S_full)
    parts = [be.gated_delta_net(q[:100], k[:100], v[:100], a[:100], b[:100], A, dtb, S_parts)]
    parts += [be.gated_delta_net(q[t:t + 1], k[t:t + 1], v[t:t + 1], a[t:t + 1], b[t:t + 1], A, dtb, S_parts)
              for t in range(100, 150)]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(S_parts, S_full, rtol=1e-4, atol=1e-5)


def test_tiled_value_heads_are_a_permutation_of_grouped():
    """llama.cpp's qwen35 GGUF stores value heads tiled ([K0, K1, K0, K1, ...]): the same layer with its
    value heads (v, a, b, A, dt_bias, state) permuted so gives the same outputs, permuted."""
    Hk, Hv = 2, 6
    q, k, v, a, b, A, dtb = _net_inputs(9, Hk, Hv)
    grouped = be.gated_delta_net(q, k, v, a, b, A, dtb, np.zeros((Hv, 8, 6), np.float32))
    perm = np.arange(Hv).reshape(Hk, Hv // Hk).T.reshape(-1)      # tiled slot j holds grouped head perm[j]
    tiled = be.gated_delta_net(q, k, v[:, perm], a[:, perm], b[:, perm], A[perm], dtb[perm],
                               np.zeros((Hv, 8, 6), np.float32), v_tiled=True)
    np.testing.assert_allclose(tiled, grouped[:, perm], rtol=1e-5, atol=1e-6)
    assert not np.allclose(expand_heads(q, Hv), expand_heads(q, Hv, tiled=True))


@pytest.mark.parametrize("T", [1, 21])
def test_equals_transformers_reference(T):
    torch = pytest.importorskip("torch")
    mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    q, k, v, a, b, A, dtb = _net_inputs(T, Hk=2, Hv=4, dk=16, dv=8)
    S0 = _r(4, 16, 8, scale=0.3)
    S = S0.copy()
    got = be.gated_delta_net(q, k, v, a, b, A, dtb, S)
    tt = lambda x: torch.from_numpy(np.ascontiguousarray(x))[None]           # noqa: E731  batch of one
    g = torch.from_numpy(A) * torch.nn.functional.softplus(tt(a) + torch.from_numpy(dtb))
    fn = mod.torch_recurrent_gated_delta_rule if T == 1 else mod.torch_chunk_gated_delta_rule
    kw = {} if T == 1 else {"chunk_size": 8}
    want, S_want = fn(tt(q), tt(k), tt(v), g=g, beta=torch.sigmoid(tt(b)), initial_state=tt(S0),
                      output_final_state=True, use_qk_l2norm_in_kernel=True, **kw)
    np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(S, S_want[0].numpy(), rtol=1e-4, atol=1e-5)
