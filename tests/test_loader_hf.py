"""read_hf_folder on good folders: single file, sharded, BF16 from torch, FP8 raw bytes, Quark hand-off."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from badfiles import write_small_hf
from safetensors.numpy import load_file

from rocmforge.errors import ModelFormatError
from rocmforge.loaders.base import RawTensor
from rocmforge.loaders.detect_format import detect_format, open_model_file
from rocmforge.loaders.hf import read_hf_folder


@pytest.mark.parametrize("sharded", [False, True])
def test_numpy_folder(tmp_path, sharded):
    folder = write_small_hf(tmp_path / "m", sharded=sharded)
    lf = read_hf_folder(folder)
    assert lf.format == "hf" and lf.path == str(folder)
    assert lf.metadata["architectures"] == ["LlamaForCausalLM"]
    assert lf.extra["tokenizer_dir"] == str(folder)
    assert lf.extra["generation_config"] == {"eos_token_id": 2}
    assert len(lf.extra["files"]) == (2 if sharded else 1)
    ref = {}
    for f in lf.extra["files"]:
        ref.update(load_file(f))
    assert set(lf.tensors) == set(ref)
    want = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
            np.dtype(np.uint8): "U8"}
    for name, arr in ref.items():
        t = lf.tensors[name]
        assert t.qtype == want[arr.dtype] and t.shape == arr.shape
        np.testing.assert_array_equal(t.data, arr)
    assert lf.file_size == sum(__import__("os").path.getsize(f) for f in lf.extra["files"])
    assert detect_format(folder) == "hf" and set(open_model_file(folder).tensors) == set(ref)


def test_no_tokenizer_or_generation_config(tmp_path):
    lf = read_hf_folder(write_small_hf(tmp_path / "m", extra_files=False))
    assert lf.extra["tokenizer_dir"] is None and lf.extra["generation_config"] is None


def test_bf16_and_fp8_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path / "bf16"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=g).to(torch.bfloat16)
    tensors = {"w": w, "b": torch.randn(8, generator=g, dtype=torch.float16)}
    if hasattr(torch, "float8_e4m3fn"):
        tensors["f8"] = torch.randn(4, 8, generator=g).to(torch.float8_e4m3fn)
        tensors["f8b"] = torch.randn(4, 8, generator=g).to(torch.float8_e5m2)
    save_file(tensors, str(folder / "model.safetensors"))
    lf = read_hf_folder(folder)
    t = lf.tensors["w"]
    assert (t.qtype, t.shape, t.data.dtype) == ("BF16", (6, 8), np.uint16)
    np.testing.assert_array_equal(t.data, w.view(torch.int16).numpy().view(np.uint16))
    as_f32 = (t.data.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(as_f32, w.float().numpy())
    assert lf.tensors["b"].qtype == "F16"
    if "f8" in tensors:
        for name, qtype in (("f8", "F8_E4M3"), ("f8b", "F8_E5M2")):
            t = lf.tensors[name]
            assert (t.qtype, t.shape, t.data.dtype) == (qtype, (4, 8), np.uint8)
            np.testing.assert_array_equal(t.data, tensors[name].view(torch.uint8).numpy())


def test_quark_hand_off(tmp_path, monkeypatch):
    folder = write_small_hf(tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "quark", "export": {"kv_cache_group": []}}
    (folder / "config.json").write_text(json.dumps(config))
    seen = {}

    def convert_quark_tensors(cfg: dict, tensors: dict[str, RawTensor]) -> dict[str, RawTensor]:
        seen["config"], seen["names"] = cfg, sorted(tensors)
        return {"only": tensors["lm_head.weight"]}

    fake = types.ModuleType("rocmforge.loaders.quark")
    fake.convert_quark_tensors = convert_quark_tensors
    fake.quark_extras = lambda cfg, raw, converted: {"kv_scales": {}}
    monkeypatch.setitem(sys.modules, "rocmforge.loaders.quark", fake)
    lf = read_hf_folder(folder)
    assert list(lf.tensors) == ["only"] and seen["config"]["quantization_config"]["quant_method"] == "quark"
    assert len(seen["names"]) == 4 and lf.extra["quant_config"]["quant_method"] == "quark"


def test_quark_missing_module_is_clear(tmp_path, monkeypatch):
    folder = write_small_hf(tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "quark"}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setitem(sys.modules, "rocmforge.loaders.quark", None)   # import raises ImportError
    with pytest.raises(ModelFormatError, match="Quark"):
        read_hf_folder(folder)


def test_other_quant_method_is_left_alone(tmp_path):
    folder = write_small_hf(tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8"}
    (folder / "config.json").write_text(json.dumps(config))
    assert len(read_hf_folder(folder).tensors) == 4


def test_config_and_hint_errors(tmp_path):
    folder = write_small_hf(tmp_path / "m")
    with pytest.raises(ModelFormatError, match="folder"):
        open_model_file(folder / "config.json")
    with pytest.raises(ModelFormatError, match="folder"):
        open_model_file(folder / "model.safetensors")
