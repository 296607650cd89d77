"""Small valid model files, and a generator of broken ones built from them.

Nothing binary is committed: every file is written fresh into a tmp dir.
``write_small_gguf`` / ``write_small_hf`` make valid files;
``gguf_cases`` / ``safetensors_cases`` list (id, builder, expected-word)
triples whose builder writes one corrupted file and returns its path.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "ab", "\u00e9t\u00e9", "\u2581x"]


def small_gguf_tensors(seed: int = 0) -> dict[str, tuple[np.ndarray, QT | None]]:
    """name -> (array to hand GGUFWriter, raw dtype or None). Shapes in NumPy order."""
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((4, 32)).astype(np.float32)
    return {
        "token_embd.weight": (f32, None),
        "blk.0.attn_norm.weight": (rng.standard_normal(32).astype(np.float32), None),
        "blk.0.attn_q.weight": (rng.standard_normal((2, 32)).astype(np.float16), None),
        "blk.0.attn_k.weight": (gguf.quants.quantize(f32, QT.Q8_0), QT.Q8_0),
        "blk.0.attn_v.weight": (gguf.quants.quantize(f32, QT.Q4_0), QT.Q4_0),
        "blk.0.ffn_up.weight": (rng.integers(0, 256, (2, 144), dtype=np.uint8), QT.Q4_K),  # (2, 256)
        "blk.0.ffn_down.weight": (gguf.quants.quantize(f32, QT.BF16), QT.BF16),
    }


def write_small_gguf(path: str | Path, *, alignment: int | None = None, tensors: bool = True) -> Path:
    """A few-KB llama-flavoured GGUF with F32, F16, Q8_0, Q4_0, Q4_K and BF16 tensors."""
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_bool("tiny.flag", True)
    w.add_int64("tiny.big", -(2**40))
    w.add_float64("tiny.pi", 3.25)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([float(-i) for i in range(len(TOKENS))])
    w.add_token_types([1] * len(TOKENS))
    w.add_array("tiny.nested", [[1, 2], [3]])
    w.add_uint32("tiny.dup1", 1)     # same-length keys: the corpus renames one into the other
    w.add_uint32("tiny.dup2", 2)
    if tensors:
        for name, (arr, raw) in small_gguf_tensors().items():
            w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- hand-parsing helpers used to corrupt specific fields ----------------------

def gguf_layout(data: bytes) -> dict:
    """Byte offsets of the fields of a (valid, little-endian) GGUF, for targeted corruption."""
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", data, pos)
    pos += 16
    kvs = {}

    def skip_value(pos: int, vtype: int) -> int:
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if vtype in sizes:
            return pos + sizes[vtype]
        if vtype == 8:
            (n,) = struct.unpack_from("<Q", data, pos)
            return pos + 8 + n
        itype, n = struct.unpack_from("<IQ", data, pos)
        pos += 12
        for _ in range(n):
            pos = skip_value(pos, itype)
        return pos

    for _ in range(n_kv):
        start = pos
        (klen,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8:pos + 8 + klen].decode()
        pos += 8 + klen
        (vtype,) = struct.unpack_from("<I", data, pos)
        kvs[key] = {"start": start, "type_at": pos, "value_at": pos + 4}
        pos = skip_value(pos + 4, vtype)
    tensors = {}
    for _ in range(n_tensors):
        start = pos
        (nlen,) = struct.unpack_from("<Q", data, pos)
        name = data[pos + 8:pos + 8 + nlen].decode()
        pos += 8 + nlen
        (n_dims,) = struct.unpack_from("<I", data, pos)
        info = {"start": start, "n_dims_at": pos, "dims_at": pos + 4, "n_dims": n_dims}
        pos += 4 + 8 * n_dims
        info["type_at"] = pos
        info["offset_at"] = pos + 4
        pos += 12
        tensors[name] = info
    return {"n_tensors": n_tensors, "n_kv": n_kv, "kv": kvs, "tensors": tensors, "infos_end": pos}


def write_small_hf(folder: str | Path, *, sharded: bool = False, extra_files: bool = True) -> Path:
    """An HF folder with config.json and F32/F16/I8/U8 tensors (safetensors.numpy)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((8, 16)).astype(np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(16, np.float16),
        "model.layers.0.mlp.up_proj.weight": rng.integers(-128, 127, (4, 16), dtype=np.int8),
        "lm_head.weight": rng.integers(0, 255, (8, 16), dtype=np.uint8),
    }
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "vocab_size": 8}))
    if extra_files:
        (folder / "tokenizer.json").write_text("{}")
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    if sharded:
        names = sorted(tensors)
        parts = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
        weight_map = {}
        for fname, keys in parts.items():
            save_file({k: tensors[k] for k in keys}, str(folder / fname))
            weight_map.update({k: fname for k in keys})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    return folder


def safetensors_bytes(header: dict, data: bytes, *, pad: bool = True) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data
