"""gpt-oss MXFP4 checkpoints: *_blocks + *_scales experts load as MXFP4 and give the dequantised model's logits.

A tiny random gpt-oss is written by transformers (float), its experts are then
quantised here to the layout the released checkpoints use (transformers'
integrations/mxfp4.py: blocks (E, rows, K/32, 16) uint8, scales (E, rows, K/32)
uint8 E8M0, gate/up rows interleaved). Two folders come out: the MXFP4 one and
the same model with those MXFP4 values dequantised back to float. Their logits
must agree exactly in rocmforge, the experts must stay MXFP4 after loading, and
transformers' own dequantisation of the MXFP4 folder must match ours.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rocmforge.quant import dequantize, quantize  # noqa: E402
from rocmforge.testing.conformance import NMSE_TRANSFORMERS, PROMPT, nmse  # noqa: E402

CONFIG = {"model_type": "gpt_oss", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
          "num_local_experts": 4, "num_experts_per_tok": 3, "sliding_window": 4, "max_position_embeddings": 512,
          "initializer_range": 0.05, "tie_word_embeddings": False,
          "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                              "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 64}}


def _to_mx(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., rows, K) float -> (blocks (..., rows, K/32, 16), scales (..., rows, K/32), dequantised float)."""
    q = quantize(w, "MXFP4_E2M1").reshape(*w.shape[:-1], w.shape[-1] // 32, 17)
    back = dequantize(q.reshape(-1), "MXFP4_E2M1", w.shape)
    return np.ascontiguousarray(q[..., 1:]), np.ascontiguousarray(q[..., 0]), back


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from safetensors.numpy import load_file, save_file

    from rocmforge.testing.tiny import make_hf_model

    root = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    src = make_hf_model("GptOssForCausalLM", CONFIG, root / "src", seed=3)
    tensors = load_file(str(src / "model.safetensors"))
    mx, flt = {}, {}
    for name, arr in tensors.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            # the checkpoint's rows are output features: transformers' params transposed
            blocks, scales, back = _to_mx(np.swapaxes(arr, -1, -2).astype(np.float32))
            mx[name + "_blocks"], mx[name + "_scales"] = blocks, scales
            flt[name] = np.ascontiguousarray(np.swapaxes(back, -1, -2))
        else:
            mx[name] = flt[name] = arr
    config = json.loads((src / "config.json").read_text())
    out = {}
    for form, data in (("mxfp4", mx), ("float", flt)):
        d = root / form
        d.mkdir()
        save_file(data, str(d / "model.safetensors"))
        cfg = dict(config)
        if form == "mxfp4":
            cfg["quantization_config"] = {"quant_method": "mxfp4",
                                          "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                                     "model.embed_tokens", "lm_head"]}
        (d / "config.json").write_text(json.dumps(cfg))
        out[form] = d
    yield out
    shutil.rmtree(root, ignore_errors=True)


def test_experts_stay_mxfp4(folders):
    from rocmforge.model import load_model

    m = load_model(str(folders["mxfp4"]), tokenizer=False)
    for kind in ("gate", "up", "down"):
        t = m.tensors[f"blk.0.ffn_{kind}_exps"]
        assert t.raw.qtype == "MXFP4_E2M1" and t.transform is None, (kind, t.raw.qtype, t.transform)
    assert m.tensors["blk.0.ffn_gate_exps"].raw.shape == (4, 32, 64)
    assert m.tensors["blk.0.ffn_down_exps"].raw.shape == (4, 64, 32)
    assert m._raw("blk.0.ffn_up_exps").qtype == "MXFP4_E2M1"      # materialize keeps it quantised


def test_mxfp4_logits_equal_dequantised(folders):
    from rocmforge.model import load_model

    prompt = [p % CONFIG["vocab_size"] for p in PROMPT]
    got = load_model(str(folders["mxfp4"]), tokenizer=False).logits(prompt)
    ref = load_model(str(folders["float"]), tokenizer=False).logits(prompt)
    e = nmse(got, ref)
    assert e <= 1e-10, f"MXFP4 folder vs its dequantised float twin: NMSE {e:.3g}"


def test_mxfp4_matches_transformers(folders):
    """transformers dequantises the MXFP4 folder itself (CPU, no kernels): its logits against ours."""
    import torch
    import transformers

    from rocmforge.model import load_model
    from rocmforge.testing.tiny import hf_logits

    prompt = [p % CONFIG["vocab_size"] for p in PROMPT]
    ours = load_model(str(folders["mxfp4"]), tokenizer=False).logits(prompt)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folders["mxfp4"], dtype=torch.float32,
            quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()
    except (ImportError, RuntimeError, ValueError) as exc:   # an environment without MXFP4 support
        pytest.skip(f"transformers cannot load this MXFP4 checkpoint here: {exc}")
    experts = model.model.layers[0].mlp.experts
    # transformers' own dequantisation agrees with ours, value for value (it may keep bf16: exact for FP4 x 2^k)
    float_twin = transformers.AutoModelForCausalLM.from_pretrained(folders["float"], dtype=torch.float32)
    ref_w = float_twin.model.layers[0].mlp.experts.gate_up_proj.detach().float()
    assert torch.equal(experts.gate_up_proj.detach().float(), ref_w)
    with torch.no_grad():
        theirs = model.float()(torch.tensor([prompt]), use_cache=False).logits[0].numpy()
    e = nmse(ours, theirs)
    assert e <= NMSE_TRANSFORMERS, f"rocmforge MXFP4 vs transformers' dequantised MXFP4: NMSE {e:.3g}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    # and the float twin through transformers' plain loader gives the same logits
    e2 = nmse(ours, hf_logits(folders["float"], prompt))
    assert e2 <= NMSE_TRANSFORMERS, f"vs transformers on the float twin: NMSE {e2:.3g}"
