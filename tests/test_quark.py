"""AMD Quark exports -> rocmforge tensors.

The fast tests build tensors laid out exactly as amd-quark 0.13 writes them
(the packers below are ports of ``quark/torch/utils/pack.py``: ``Pack_fp4``,
``Pack_fp6``; scales via ``to_e8m0_uint8``). The slow test quantises a tiny
Llama with amd-quark itself, exports it, loads the folder and compares our
decoded weights with Quark's own quantize-dequantize output.
"""

import json

import ml_dtypes
import numpy as np
import pytest

from rocmforge.errors import QuantFormatError
from rocmforge.loaders.base import RawTensor
from rocmforge.loaders.quark import convert_quark_tensors


def quark_pack_fp4(codes: np.ndarray) -> np.ndarray:
    """Pack_fp4.pack: (..., n) 4-bit codes -> (..., n/2), (c[1] << 4) + c[0]."""
    pairs = codes.reshape(*codes.shape[:-1], -1, 2).astype(np.uint8)
    return (pairs[..., 1] << 4) + pairs[..., 0]


def quark_pack_fp6(codes: np.ndarray) -> np.ndarray:
    """Pack_fp6.pack: 4 codes -> 3 bytes [byte2, byte1, byte0] of v3<<18 | v2<<12 | v1<<6 | v0."""
    q = codes.reshape(*codes.shape[:-1], -1, 4).astype(np.int32)
    combined = (q[..., 3] << 18) | (q[..., 2] << 12) | (q[..., 1] << 6) | q[..., 0]
    out = np.stack([combined & 0xFF, (combined >> 8) & 0xFF, (combined >> 16) & 0xFF], axis=-1)
    return out.astype(np.uint8).reshape(*codes.shape[:-1], -1)


ELEMENT = {"fp4": (4, ml_dtypes.float4_e2m1fn, quark_pack_fp4, "MXFP4_E2M1"),
           "fp6_e2m3": (6, ml_dtypes.float6_e2m3fn, quark_pack_fp6, "MXFP6_E2M3"),
           "fp6_e3m2": (6, ml_dtypes.float6_e3m2fn, quark_pack_fp6, "MXFP6_E3M2")}


def mx_spec(dtype: str) -> dict:
    """A weight spec as QTensorConfig.to_dict writes it for OCP_MX*Spec."""
    return {"dtype": dtype, "qscheme": "per_group", "group_size": 32, "ch_axis": -1, "scale_format": "e8m0",
            "is_dynamic": False, "symmetric": None, "round_method": "half_even", "scale_type": "float",
            "mx_element_dtype": None, "observer_cls": "PerBlockMXObserver"}


def fp8_spec(qscheme: str, ch_axis=None, group_size=None) -> dict:
    return {"dtype": "fp8_e4m3", "qscheme": qscheme, "ch_axis": ch_axis, "group_size": group_size,
            "scale_format": None, "is_dynamic": False, "symmetric": True}


def config(weight: dict, dtype: str = "float32", **extra) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "torch_dtype": dtype,
            "quantization_config": {"quant_method": "quark", "global_quant_config": {"weight": weight},
                                    "layer_quant_config": {}, "layer_type_quant_config": {},
                                    "exclude": ["lm_head"], "export": {"weight_format": "real_quantized",
                                                                      "pack_method": "reorder"}, **extra}}


def raw(name: str, qtype: str, arr: np.ndarray) -> RawTensor:
    return RawTensor(name, qtype, tuple(arr.shape), arr)


def quark_mx_layer(rng, prefix: str, dtype: str, out: int = 8, n_in: int = 96):
    """Random codes and E8M0 scales written the Quark way, and their exact float values."""
    bits, elem, packer, _ = ELEMENT[dtype]
    codes = rng.integers(0, 1 << bits, (out, n_in)).astype(np.uint8)
    scales = rng.integers(127 - 10, 127 + 10, (out, n_in // 32)).astype(np.uint8)
    values = codes.view(elem).astype(np.float32) * np.repeat(2.0 ** (scales.astype(np.float32) - 127), 32, axis=1)
    tensors = {f"{prefix}.weight": raw(f"{prefix}.weight", "U8", packer(codes)),
               f"{prefix}.weight_scale": raw(f"{prefix}.weight_scale", "U8", scales)}
    return tensors, values


@pytest.mark.parametrize("dtype", list(ELEMENT))
def test_mx_weights_become_one_mx_tensor(dtype):
    rng = np.random.default_rng(0)
    tensors, values = quark_mx_layer(rng, "model.layers.0.mlp.down_proj", dtype)
    norm = np.ones(96, np.float32)
    tensors["model.norm.weight"] = raw("model.norm.weight", "F32", norm)
    tensors["model.layers.0.mlp.down_proj.input_scale"] = raw("x", "F32", np.array(0.5, np.float32))
    out = convert_quark_tensors(config(mx_spec(dtype)), tensors)
    assert sorted(out) == ["model.layers.0.mlp.down_proj.weight", "model.norm.weight"]
    w = out["model.layers.0.mlp.down_proj.weight"]
    assert w.qtype == ELEMENT[dtype][3] and w.shape == (8, 96)
    assert w.data.dtype == np.uint8 and w.data.ndim == 1 and w.nbytes == 8 * 3 * (1 + 32 * ELEMENT[dtype][0] // 8)
    np.testing.assert_array_equal(w.dequantize(), values)
    assert out["model.norm.weight"] is tensors["model.norm.weight"]


def test_mxfp8_weights_stored_as_float8():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (4, 64)).astype(np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0                       # no NaN codes
    scales = rng.integers(120, 130, (4, 2)).astype(np.uint8)
    tensors = {"l.weight": raw("l.weight", "F8_E4M3", codes), "l.weight_scale": raw("l.weight_scale", "U8", scales)}
    out = convert_quark_tensors(config(mx_spec("fp8_e4m3")), tensors)["l.weight"]
    want = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.repeat(2.0 ** (scales - 127.0), 32, axis=1)
    assert out.qtype == "MXFP8_E4M3"
    np.testing.assert_array_equal(out.dequantize(), want.astype(np.float32))


def test_layer_patterns_pick_the_element_type():
    rng = np.random.default_rng(2)
    down, down_values = quark_mx_layer(rng, "model.layers.0.mlp.down_proj", "fp6_e2m3")
    up, up_values = quark_mx_layer(rng, "model.layers.0.mlp.up_proj", "fp6_e3m2")
    cfg = config(mx_spec("fp6_e3m2"))
    cfg["quantization_config"]["layer_quant_config"] = {"*down_proj": {"weight": mx_spec("fp6_e2m3")}}
    out = convert_quark_tensors(cfg, {**down, **up})
    assert out["model.layers.0.mlp.down_proj.weight"].qtype == "MXFP6_E2M3"
    assert out["model.layers.0.mlp.up_proj.weight"].qtype == "MXFP6_E3M2"
    np.testing.assert_array_equal(out["model.layers.0.mlp.down_proj.weight"].dequantize(), down_values)
    np.testing.assert_array_equal(out["model.layers.0.mlp.up_proj.weight"].dequantize(), up_values)


def test_layer_type_config_is_used_when_only_it_fits():
    rng = np.random.default_rng(3)
    tensors, values = quark_mx_layer(rng, "m.q_proj", "fp4")
    cfg = config(None)
    cfg["quantization_config"]["layer_type_quant_config"] = {"Linear": {"weight": mx_spec("fp4")}}
    np.testing.assert_array_equal(convert_quark_tensors(cfg, tensors)["m.q_proj.weight"].dequantize(), values)
    cfg["quantization_config"]["global_quant_config"]["weight"] = mx_spec("fp6_e2m3")
    tensors6, _ = quark_mx_layer(rng, "m.k_proj", "fp6_e3m2")
    cfg["quantization_config"]["layer_type_quant_config"] = {"Linear": {"weight": mx_spec("fp6_e3m2")}}
    with pytest.raises(QuantFormatError, match="several quantisation specs fit"):
        convert_quark_tensors(cfg, tensors6)


@pytest.mark.parametrize("model_dtype,qtype", [("float32", "F32"), ("bfloat16", "BF16"), ("float16", "F16")])
def test_fp8_per_tensor_is_dequantised_to_the_model_dtype(model_dtype, qtype):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 40)).astype(ml_dtypes.float8_e4m3fn)
    s = np.array(0.0123, np.float32)
    tensors = {"l.weight": raw("l.weight", "F8_E4M3", w.view(np.uint8)), "l.weight_scale": raw("s", "F32", s)}
    out = convert_quark_tensors(config(fp8_spec("per_tensor"), model_dtype), tensors)["l.weight"]
    want = w.astype(np.float32) * s
    assert out.qtype == qtype and out.shape == (6, 40)
    np.testing.assert_array_equal(out.dequantize(), want.astype({"F32": np.float32, "F16": np.float16,
                                                                   "BF16": ml_dtypes.bfloat16}[qtype]).astype(np.float32))


def test_fp8_per_channel_and_per_group():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 64)).astype(ml_dtypes.float8_e4m3fn)
    per_row = rng.uniform(0.01, 0.1, 8).astype(np.float32)
    tensors = {"l.weight": raw("l.weight", "F8_E4M3", w.view(np.uint8)), "l.weight_scale": raw("s", "F32", per_row)}
    out = convert_quark_tensors(config(fp8_spec("per_channel", ch_axis=0)), tensors)["l.weight"]
    np.testing.assert_array_equal(out.dequantize(), w.astype(np.float32) * per_row[:, None])
    per_group = rng.uniform(0.01, 0.1, (8, 4)).astype(np.float32)
    tensors["l.weight_scale"] = raw("s", "F32", per_group)
    out = convert_quark_tensors(config(fp8_spec("per_group", ch_axis=-1, group_size=16)), tensors)["l.weight"]
    np.testing.assert_array_equal(out.dequantize(), w.astype(np.float32) * np.repeat(per_group, 16, axis=1))


def test_fake_quantized_weights_pass_through_without_scales():
    w = np.ones((4, 32), np.float32)
    tensors = {"l.weight": raw("l.weight", "F32", w), "l.weight_scale": raw("s", "U8", np.full((4, 1), 127, np.uint8))}
    out = convert_quark_tensors(config(mx_spec("fp4")), tensors)
    assert list(out) == ["l.weight"] and out["l.weight"] is tensors["l.weight"]


def test_errors_say_what_was_expected():
    rng = np.random.default_rng(6)
    tensors, _ = quark_mx_layer(rng, "m.o_proj", "fp4")
    with pytest.raises(QuantFormatError, match="expected quantization_config.quant_method 'quark', found 'awq'"):
        convert_quark_tensors({"quantization_config": {"quant_method": "awq"}}, tensors)
    int4 = {"dtype": "int4", "qscheme": "per_group", "group_size": 128, "scale_format": None}
    with pytest.raises(QuantFormatError, match=r"'m.o_proj.weight' \(U8 \[8, 48\].*int4 per_group.*rocmforge reads MX"):
        convert_quark_tensors(config(int4), tensors)
    tensors["m.o_proj.weight_scale"] = raw("s", "U8", np.zeros((8, 2), np.uint8))     # 64 elements, not 96
    with pytest.raises(QuantFormatError, match="does not match the stored tensors"):
        convert_quark_tensors(config(mx_spec("fp4")), tensors)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["mxfp4", "mxfp6_e3m2", "mxfp6_e2m3", "fp8_per_tensor", "fp8_per_channel"])
def test_real_quark_export_round_trip(scheme, tmp_path):
    """Quantise a tiny Llama with amd-quark, export, load: bit-exact with Quark's own QDQ weights."""
    pytest.importorskip("quark")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from quark.torch import ModelQuantizer, export_safetensors
    from quark.torch.quantization.config import config as qc

    from rocmforge.loaders.hf import read_hf_folder

    spec = {"mxfp4": qc.OCP_MXFP4Spec(ch_axis=-1, is_dynamic=False),
            "mxfp6_e3m2": qc.OCP_MXFP6E3M2Spec(ch_axis=-1, is_dynamic=False),
            "mxfp6_e2m3": qc.OCP_MXFP6E2M3Spec(ch_axis=-1, is_dynamic=False),
            "fp8_per_tensor": qc.FP8E4M3PerTensorSpec(observer_method="min_max", is_dynamic=False),
            "fp8_per_channel": qc.FP8E4M3PerChannelSpec(is_dynamic=False, ch_axis=0)}[scheme]
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    quantizer = ModelQuantizer(qc.QConfig(global_quant_config=qc.QLayerConfig(weight=spec.to_quantization_spec()),
                                          exclude=["lm_head"]))
    model = quantizer.freeze(quantizer.quantize_model(model, None))
    layers = {f"model.layers.0.{n}.weight": m for n, m in model.model.layers[0].named_modules()
              if hasattr(m, "weight_quantizer") and m.weight_quantizer is not None}
    assert len(layers) == 7
    with torch.no_grad():
        qdq = {n: m.weight_quantizer(m.weight).float().numpy() for n, m in layers.items()}
    export_safetensors(model, tmp_path)
    qconf = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qconf["quant_method"] == "quark"

    loaded = read_hf_folder(tmp_path)
    want_qtype = {"mxfp4": "MXFP4_E2M1", "mxfp6_e3m2": "MXFP6_E3M2", "mxfp6_e2m3": "MXFP6_E2M3"}.get(scheme, "F32")
    assert not any(n.endswith("_scale") for n in loaded.tensors)
    for name, want in qdq.items():
        t = loaded.tensors[name]
        assert t.qtype == want_qtype and t.shape == want.shape
        np.testing.assert_array_equal(t.dequantize(), want)
    assert loaded.tensors["lm_head.weight"].qtype == "F32"
