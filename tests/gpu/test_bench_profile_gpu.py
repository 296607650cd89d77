"""``rocmforge bench --profile`` on the GPU: per-kernel events of one decode step and one prefill
of a tiny random model (rocmforge/backends/cupy_profile.py)."""

from __future__ import annotations

import json

import pytest

from .helpers import tiny_config

pytestmark = pytest.mark.gpu

PROMPT = [1, 17, 200, 3, 45, 99, 5, 250, 128, 7, 64, 33, 2, 180, 11, 90]      # > MATVEC_MAX_T: a GEMM prefill


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from rocmforge.testing.tiny import hf_to_gguf, make_hf_model

    t = tiny_config("llama", "llama-gqa")
    d = tmp_path_factory.mktemp("profile")
    hf = make_hf_model(t["hf_class"], t["config"], d / "hf", seed=3)
    return {"F32": hf, "Q4_0": hf_to_gguf(hf, d / "m-Q4_0.gguf", "Q4_0")}


def _gpu_model(path):
    import rocmforge

    return rocmforge.load_model(str(path), device="gpu", tokenizer=False).prepare()


def _check_times(p):
    assert p.samples and all(s.ms >= 0 for s in p.samples)
    # events of one stream: the launches do not overlap, so their sum fits in the step
    assert p.kernel_ms <= p.wall_ms * 1.0001 + 1e-3, (p.kernel_ms, p.wall_ms)
    assert p.span_ms is not None and p.kernel_ms <= p.span_ms * 1.0001 + 1e-3, (p.kernel_ms, p.span_ms)


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_decode_profile(paths, qtype):
    from rocmforge.backends.cupy_profile import GRAPHS_OFF_NOTE, decode_bytes, format_table, profile_decode

    m = _gpu_model(paths[qtype])
    be = m.backend
    graphs = be.graphs
    p = profile_decode(m, PROMPT, warmup=2)
    assert be._prof is None and be.graphs == graphs          # restored
    _check_times(p)
    rows = {r.name: r for r in p.rows}
    mv = [r for n, r in rows.items() if n.startswith("matvec_")]
    assert mv, sorted(rows)
    assert "attn_decode" in rows and "kv_store" in rows, sorted(rows)
    suffix = "q4_0" if qtype == "Q4_0" else "f32"
    assert f"matvec_{suffix}" in rows, sorted(rows)
    # the cost figures match the launch arguments of cupy_backend.py
    for r in mv:
        assert r.weight_bytes > 0 and r.nbytes and r.flops, r
    assert rows["attn_decode"].flops and rows["attn_decode"].nbytes
    assert p.gap_calls == 0, "launches ran after the GPU caught up: the spin was too short"
    assert p.eager_wall_ms > 0 and p.host_ms is not None
    # one eager step reads the same weights whether timed or counted
    assert decode_bytes(m, PROMPT)["weight_bytes"] == p.weight_bytes > 0
    text = format_table(p)
    assert GRAPHS_OFF_NOTE in text and "attn_decode" in text and "host overhead" in text


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_prefill_profile(paths, qtype):
    from rocmforge.backends.cupy_profile import profile_prefill

    m = _gpu_model(paths[qtype])
    p = profile_prefill(m, PROMPT)
    _check_times(p)
    names = {r.name for r in p.rows}
    assert "attn_prefill" in names, sorted(names)
    # quantised weights: fp16 operands, float32 out of one gemmEx (cupy_gemm.py), or an fp16 GEMM
    # with the gemm_ex knob off
    gemm = "cublas_gemm_f32" if qtype == "F32" else ("cublas_gemmex_f16_f32" if m.backend.gemm_ex
                                                      else "cublas_gemm_f16")
    assert gemm in names, sorted(names)
    if qtype == "Q4_0":
        assert "dequant_q4_0" in names and "cupy_cast_f16" in names, sorted(names)
    row = next(r for r in p.rows if r.name == gemm)
    assert row.flops and row.tflops is not None


def test_copy_bandwidth():
    import cupy as cp

    from rocmforge.backends.cupy_profile import copy_bandwidth

    r = copy_bandwidth(cp, nbytes=64 << 20, repeats=2)
    assert r["bytes"] == 64 << 20 and r["gbps"] > 1.0


def test_bench_cli_profile_json(paths, capsys):
    from rocmforge.cli.main import main

    rc = main(["bench", str(paths["Q4_0"]), "--device", "gpu", "--prompt", "16", "--gen", "4", "--repeat", "1",
               "--profile", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)
    assert isinstance(res["graphs"], bool)
    assert res["decode_weight_bytes"] > 0 and res["decode_gbps"] > 0 and res["copy_gbps"] > 0
    assert 0 < res["decode_bw_fraction"]
    dec, pre = res["profile"]["decode"], res["profile"]["prefill"]
    assert dec["graphs"] is False and dec["tokens"] == 1 and pre["tokens"] == 16
    assert any(k["name"] == "attn_decode" for k in dec["kernels"])
    assert dec["kernel_ms"] <= dec["wall_ms"] * 1.0001 + 1e-3


def test_bench_cli_profile_text(paths, capsys):
    from rocmforge.cli.main import main

    rc = main(["bench", str(paths["Q4_0"]), "--device", "gpu", "--prompt", "16", "--gen", "4", "--repeat", "1",
               "--profile"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "graphs: " in out and "copy ceiling" in out and "of the copy ceiling" in out
    assert "decode: 1 token(s)" in out and "prefill: 16 token(s)" in out and "attn_decode" in out
