"""Graph-replayed single-token decode (rocmforge/backends/cupy_graph.py) against eager launches.

Both run the same kernels on the same inputs, so the logits must agree to
rounding (NMSE <= 1e-10; in practice they are bit-identical), step after step,
and greedy generation must pick the same tokens. MoE models need the host
inside a step (routing) and must fall back to eager launches cleanly.
"""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, tiny_config

pytestmark = pytest.mark.gpu

CASES = [("llama", "llama-gqa"), ("llama", "mistral-swa"), ("qwen3", "qwen3-headdim"),
         ("gemma3", "gemma3-local-global"), ("llama", "mixtral-moe")]




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from rocmforge.testing.tiny import hf_to_gguf, make_hf_model

    out = {}
    for arch, name in CASES:
        t = tiny_config(arch, name)
        d = tmp_path_factory.mktemp(name)
        hf = make_hf_model(t["hf_class"], t["config"], d / "hf", seed=5)
        out[name] = {"F32": hf, "Q4_0": hf_to_gguf(hf, d / "m-Q4_0.gguf", "Q4_0")}
    return out


def _pair(path):
    import rocmforge

    eager = rocmforge.load_model(str(path), device="gpu", tokenizer=False)
    eager.backend.graphs = False
    graph = rocmforge.load_model(str(path), device="gpu", tokenizer=False)
    assert graph.backend.graphs, "graphs are on by default (unless ROCMFORGE_GPU_GRAPH=0)"
    return eager, graph


def _ids(model, n, seed):
    vocab = int(model.hparams["vocab_size"])
    return np.random.default_rng(seed).integers(1, vocab, size=n).tolist()


def _decode(model, prompt, steps, max_tokens):
    s = model.new_session(max_tokens)
    s.feed(prompt)
    rows = [s.feed([t]) for t in steps]
    return s, np.stack(rows)


@pytest.mark.parametrize("form", ["F32", "Q4_0"])
@pytest.mark.parametrize("name", [n for _, n in CASES if n != "mixtral-moe"])
def test_graph_decode_equals_eager(files, name, form):
    from rocmforge.backends.cupy_graph import DecodeGraph

    eager, graph = _pair(files[name][form])
    prompt, steps = _ids(eager, 6, 1), _ids(eager, 24, 2)
    # a cache much longer than the steps: the captured grid is sized for 200 keys
    _, ref = _decode(eager, prompt, steps, 200)
    s, got = _decode(graph, prompt, steps, 200)
    assert isinstance(s.cache.graph, DecodeGraph), f"decode was not captured: {s.cache.graph!r}"
    assert s.cache.graph.replays >= len(steps) - 2
    e = check(got, ref, 1e-10, f"{name} {form}: graph vs eager decode logits")
    print(f"{name} {form}: {len(steps)} steps, NMSE {e:.2e}, bit-identical {np.array_equal(got, ref)}")
    # greedy generation: the same tokens
    from rocmforge.generate import generate_ids
    from rocmforge.sampler import SamplingParams

    p = SamplingParams(temperature=0.0)
    a = list(generate_ids(eager, prompt, 24, p))
    b = list(generate_ids(graph, prompt, 24, p))
    assert a == b, f"greedy tokens differ: eager {a} vs graph {b}"


def test_graph_across_split_boundaries(files):
    """Long enough that the decode attention's split-K count changes while the graph replays."""
    from rocmforge.backends.cupy_graph import DecodeGraph

    eager, graph = _pair(files["llama-gqa"]["Q4_0"])
    prompt, steps = _ids(eager, 100, 3), _ids(eager, 60, 4)
    _, ref = _decode(eager, prompt, steps, 1024)
    s, got = _decode(graph, prompt, steps, 1024)
    assert isinstance(s.cache.graph, DecodeGraph)
    check(got, ref, 1e-10, "graph vs eager across 128 keys")
    # and against the CPU reference
    import rocmforge

    cpu = rocmforge.load_model(str(files["llama-gqa"]["Q4_0"]), device="numpy", tokenizer=False)
    _, cref = _decode(cpu, prompt, steps, 1024)
    check(got, cref, 5e-3, "graph decode vs CPU (int8 activations)")


def test_sessions_keep_their_own_graphs(files):
    from rocmforge.backends.cupy_graph import DecodeGraph

    eager, graph = _pair(files["qwen3-headdim"]["F32"])
    pa, pb, steps = _ids(eager, 5, 5), _ids(eager, 9, 6), _ids(eager, 12, 7)
    sa, sb = graph.new_session(64), graph.new_session(96)
    ea, eb = eager.new_session(64), eager.new_session(96)
    for s, p in ((sa, pa), (sb, pb), (ea, pa), (eb, pb)):
        s.feed(p)
    for t in steps:                      # interleaved: each replay must see its own cache
        check(sa.feed([t]), ea.feed([t]), 1e-10, "session a")
        check(sb.feed([t]), eb.feed([t]), 1e-10, "session b")
    assert isinstance(sa.cache.graph, DecodeGraph) and isinstance(sb.cache.graph, DecodeGraph)
    assert sa.cache.graph.graph is not sb.cache.graph.graph


def test_moe_falls_back_to_eager(files):
    import rocmforge
    from rocmforge.backends.cupy_graph import DecodeGraph

    path = files["mixtral-moe"]["F32"]
    eager, graph = _pair(path)
    prompt, steps = _ids(eager, 6, 8), _ids(eager, 20, 9)
    _, ref = _decode(eager, prompt, steps, 64)
    s, got = _decode(graph, prompt, steps, 64)
    assert not isinstance(s.cache.graph, DecodeGraph)
    assert "moe" in s.cache.graph.why, s.cache.graph.why
    check(got, ref, 1e-10, "MoE decode, graph-enabled backend vs eager")
    cpu = rocmforge.load_model(str(path), device="numpy", tokenizer=False)
    _, cref = _decode(cpu, prompt, steps, 64)
    check(got, cref, 5e-4, "MoE decode vs CPU")
    # the model is remembered: a new session does not try again
    s2, _ = _decode(graph, prompt, steps[:3], 64)
    assert not isinstance(s2.cache.graph, DecodeGraph)


def test_graphs_off_by_environment(files, monkeypatch):
    import rocmforge

    monkeypatch.setenv("ROCMFORGE_GPU_GRAPH", "0")
    m = rocmforge.load_model(str(files["llama-gqa"]["F32"]), device="gpu", tokenizer=False)
    assert not m.backend.graphs
    s, _ = _decode(m, _ids(m, 4, 10), _ids(m, 5, 11), 32)
    assert s.cache.graph is None


def test_smollm2_greedy_text_graph_equals_eager():
    import os

    import rocmforge

    path = os.environ.get("ROCMFORGE_SMOLLM2_GGUF")
    if not path:
        pytest.skip("ROCMFORGE_SMOLLM2_GGUF not set")
    texts = []
    for graphs in (False, True):
        m = rocmforge.load_model(path, device="gpu")
        m.backend.graphs = graphs
        texts.append("".join(m.generate("The capital of France is", max_tokens=32, temperature=0.0)))
    print(repr(texts[1]))
    assert texts[0] == texts[1], texts
