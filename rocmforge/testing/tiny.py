"""Tiny random models in Hugging Face and GGUF form, for tests and conformance runs.

The HF form is made by ``transformers`` itself (a real checkpoint, written by
save_pretrained) so that logits can be compared against it; the GGUF form is
written from the HF form with ``gguf.GGUFWriter`` through the architecture's
own tensor map (names and transforms) and its recipe's GGUF hparam keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_hf_model(hf_class: str, config: dict[str, Any], folder: str | Path, seed: int = 0,
                  dtype: str = "float32") -> Path:
    """Build ``transformers.<hf_class>`` from ``config`` with random weights and save it to ``folder``."""
    import torch
    import transformers

    folder = Path(folder)
    model_type = config["model_type"]
    cfg_cls = transformers.AutoConfig.for_model(model_type).__class__
    cfg = cfg_cls(**{k: v for k, v in config.items() if k != "model_type"})
    cfg.architectures = [hf_class]
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class)(cfg).eval()
    # Random init is small and near-symmetric; widen norms so every op matters. Widen around
    # the init value: 1 for most models, 0 where the norm computes (1 + w) (Gemma), so the
    # effective scale stays near 1 either way.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(p + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif name.endswith(("act_fn.alpha_p", "act_fn.alpha_n")):   # xIELU (Apertus): learned per layer
                p.copy_(p + 0.3 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("act_fn.beta"):                  # xIELU's beta: a buffer, per layer in GGUF
                b.copy_(b + 0.1 * torch.randn_like(b))
            # DeepSeek-V3-style selection bias (LFM2-MoE: expert_bias): a buffer, 0 at init
            if name.endswith(("e_score_correction_bias", "feed_forward.expert_bias")):
                b.copy_(0.05 * torch.randn_like(b))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def hf_logits(folder: str | Path, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) from transformers in float32 for one sequence."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def _tensor_qtype(canon: str, arr: np.ndarray, qtype: str, head: str) -> str:
    """The type llama.cpp's quantizer would give this tensor in a ``qtype`` model.

    Vectors (norms), biases (also per-expert (n_expert, rows) ones: llama.cpp quantises only
    ``*.weight``) and MoE routers stay F32; the output matrix (the
    token embedding when the head is tied) gets Q6_K in low-bit models, or
    Q8_0 where its rows do not fit Q6_K's 256-element blocks."""
    from ..quant import get_format

    if qtype == "F32" or arr.ndim < 2 or ".ffn_gate_inp" in canon or canon.endswith(".bias"):
        return "F32"
    if qtype in ("F16", "BF16"):
        return qtype
    if canon == head and qtype not in ("Q8_0", "Q6_K"):
        qtype = "Q6_K" if arr.shape[-1] % get_format("Q6_K").block_size == 0 else "Q8_0"
    return qtype if arr.shape[-1] % get_format(qtype).block_size == 0 else "F32"


def hf_to_gguf(folder: str | Path, out_path: str | Path, qtype: str = "F32") -> Path:
    """Write the HF checkpoint in ``folder`` as a GGUF file, through rocmforge's map and recipe.

    ``qtype`` (F32, F16, Q8_0, Q4_0, ...) is applied per tensor as llama.cpp's
    quantizer does (see _tensor_qtype)."""
    import gguf

    from ..detect import detect
    from ..hparams import resolve_hparams
    from ..loaders.hf import read_hf_folder
    from ..quant import quantize
    from ..tensor_map import check_complete, map_tensors, materialize

    loaded = read_hf_folder(str(folder))
    spec = detect(loaded)
    recipe = spec.recipe_obj
    mapped = map_tensors(spec.map_obj, "hf", loaded.tensors, str(folder))
    hp = resolve_hparams(recipe, "hf", loaded.metadata, {k: v.raw.shape for k, v in mapped.items()}, str(folder))
    check_complete(spec.map_obj, dict(mapped), hp["n_layer"], str(folder))
    arch = recipe.gguf_archs[0]
    w = gguf.GGUFWriter(str(out_path), arch)
    written: set[str] = set()
    # per-layer lists first: a GGUF key may hold a per-layer array or the period it expands
    for name, h in sorted(recipe.hparams.items(), key=lambda kv: not kv[1].per_layer):
        if not h.gguf or hp.get(name) is None:
            continue
        key = h.gguf[0].replace("{arch}", arch)
        if key in written:
            continue
        written.add(key)
        val = hp[name]
        if isinstance(val, bool):
            w.add_bool(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val) if val >= 0 else w.add_int32(key, val)
        elif isinstance(val, float):
            w.add_float32(key, val)
        elif isinstance(val, str):
            w.add_string(key, val)
        elif isinstance(val, list):
            w.add_array(key, val)
    head = "output" if "output" in mapped else "token_embd"
    for canon, t in sorted(mapped.items()):
        arr = materialize(t, hp).dequantize().astype(np.float32)
        name = canon if canon.endswith(".bias") else canon + ".weight"
        tq = _tensor_qtype(canon, arr, qtype, head)
        if tq == "F32":
            w.add_tensor(name, arr)
        elif tq == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            raw = quantize(arr, tq)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[tq])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out_path)
