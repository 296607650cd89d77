"""GPU activation quantisation (AMD Quark inputs) against rocmforge.quant.act's NumPy reference:
every scheme value for value, then a whole model whose linear inputs are quantised."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, rand, tiny_model

pytestmark = pytest.mark.gpu

MX = ["mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2"]


def _inputs(rng):
    x = rand(rng, 6, 256, scale=2.0)
    x[0, :32] = 0.0                                   # an all-zero block
    x[1, :32] *= 1e-30                                # a block of tiny values (scale clamped at 2^-127)
    x[2, 5] = 1e4                                     # one outlier: the rest of its block saturates low
    x[3, 64:96] = np.linspace(-6, 6, 32)              # grid points and ties of FP4
    return x.astype(np.float32)


@pytest.mark.parametrize("rule", ["even", "floor", "ceil"])
@pytest.mark.parametrize("kind", MX)
def test_mx_qdq_matches_reference(gb, rng, kind, rule):
    from rocmforge.quant.act import ActQuant

    act = ActQuant(kind, scale_rule=rule)
    x = _inputs(rng)
    np.testing.assert_array_equal(gb.to_numpy(gb.act_qdq(gb.upload(x), act)), act.qdq(x))


@pytest.mark.parametrize("kind", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("scale", [None, 0.0173], ids=["dynamic", "static"])
def test_fp8_qdq_matches_reference(gb, rng, kind, scale):
    from rocmforge.quant.act import ActQuant

    act = ActQuant(kind, scale)
    x = _inputs(rng)
    np.testing.assert_array_equal(gb.to_numpy(gb.act_qdq(gb.upload(x), act)), act.qdq(x))
    z = np.zeros((2, 64), np.float32)               # dynamic over zeros: the eps scale, no NaN
    np.testing.assert_array_equal(gb.to_numpy(gb.act_qdq(gb.upload(z), act)), act.qdq(z))


def _attach(model, schemes):
    """Put input schemes on the model's file tensors before anything is prepared (what the Quark loader
    does): {canonical name prefix: ActQuant}; stacked experts take the scheme on each part."""
    assert not model._materialized, "attach before the first forward"
    n = 0
    for name, t in model.tensors.items():
        for prefix, act in schemes.items():
            if name.endswith(prefix):
                for part in t.parts or [t.source or t.raw]:
                    part.act = act
                n += 1
    assert n, f"no tensor ends with any of {list(schemes)}"


@pytest.mark.parametrize("name", ["llama-gqa", "mixtral-moe"])
def test_model_with_quantised_inputs_gpu_vs_cpu(tmp_path, name):
    import rocmforge
    from rocmforge.quant.act import ActQuant

    path = tiny_model("llama", name, tmp_path, seed=7)
    schemes = {"attn_q": ActQuant("mxfp4"), "attn_k": ActQuant("mxfp4"),
               "attn_v": ActQuant("mxfp4"), "attn_output": ActQuant("fp8_e4m3", 0.01),
               "ffn_gate": ActQuant("fp8_e4m3"), "ffn_up": ActQuant("fp8_e4m3"),
               "ffn_down": ActQuant("mxfp6_e2m3", scale_rule="floor"),
               "ffn_gate_exps": ActQuant("fp8_e4m3"), "ffn_up_exps": ActQuant("fp8_e4m3"),
               "ffn_down_exps": ActQuant("mxfp4")}
    ids = [1, 17, 200, 3, 45, 99, 5, 250, 128, 7, 64, 33]
    models = {}
    for dev in ("numpy", "gpu"):
        m = rocmforge.load_model(str(path), device=dev, tokenizer=False)
        _attach(m, schemes)
        models[dev] = m
    ref = models["numpy"].logits(ids)
    check(models["gpu"].logits(ids), ref, 5e-4, f"{name} with quantised inputs, prefill")
    s = models["gpu"].new_session(32)
    s.feed(ids[:6])
    check(np.stack([s.feed([i]) for i in ids[6:]]), ref[6:], 5e-3, f"{name} with quantised inputs, decode")
    plain = rocmforge.load_model(str(path), device="numpy", tokenizer=False).logits(ids)
    assert not np.allclose(plain, ref, rtol=0, atol=1e-5), "the schemes changed nothing: the test cannot fail"
