"""benchmarks/side_by_side.py off the GPU: its GGUF writer, the llama.cpp trim, the result parsing and table."""

from __future__ import annotations

import importlib.util
import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = Path("/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp")


@pytest.fixture(scope="module")
def sbs():
    spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "benchmarks" / "side_by_side.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["tiny-q4_0", "tiny-q4_k"])
def test_tiny_gguf_loads_with_finite_logits_and_nonzero_weights(sbs, tmp_path, name):
    gguf = pytest.importorskip("gguf")
    import rocmforge
    from rocmforge.quant import dequantize

    path = sbs.write_model(name, sbs.model_path(tmp_path, name))
    shape = sbs.MODELS[name]
    r = gguf.GGUFReader(str(path))
    # llama.cpp's loader needs the vocabulary
    assert bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == shape["vocab"]
    assert len(r.fields["tokenizer.ggml.token_type"].data) == shape["vocab"]
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["output.weight"] == "Q6_K" and types["blk.0.ffn_down.weight"] == shape["qtype"]
    for t in r.tensors:
        x = dequantize(np.asarray(t.data), t.tensor_type.name, tuple(int(v) for v in reversed(t.shape)))
        assert np.isfinite(x).all(), t.name
        assert (x != 0).mean() > 0.9, t.name
        if t.tensor_type.name != "F32":
            assert 0.002 < x.std() < 0.05, (t.name, x.std())  # the size of real 7B weights

    model = rocmforge.load_model(str(path), device="cpu", tokenizer=False)
    assert model.hparams["vocab_size"] == shape["vocab"]
    logits = np.asarray(model.new_session(16).feed([1, 7, 300, 42]))
    assert logits.shape == (shape["vocab"],)
    assert np.isfinite(logits).all() and logits.std() > 0.01
    # a second call keeps the complete file
    assert sbs.write_model(name, path) == path


FAKE = {
    "rows": [
        {"model": "7b-q4_0", "llama": {"pp_tps": 10000.0, "tg_tps": 200.0}, "ours": {"pp_tps": 5000.0, "tg_tps": 150.0}},
        {"model": "8b-q4_0", "llama": {"pp_tps": 8000.0, "tg_tps": 180.0}, "ours": {"error": "boom"}},
    ]
}


def test_ratio_table(sbs):
    table = sbs.format_table(FAKE["rows"], 512, 128)
    lines = table.splitlines()
    assert lines[0] == "| model | llama.cpp pp512 | ours | ratio | llama.cpp tg128 | ours | ratio |"
    assert len(lines) == 4
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["7b-q4_0", "10000.0", "5000.0", "0.50x", "200.0", "150.0", "0.75x"]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells == ["8b-q4_0", "8000.0", "-", "-", "180.0", "-", "-"]


def test_combine_merges_an_ours_run_and_a_llama_run(sbs, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [{"model": "m", "ours": {"pp_tps": 1.0, "tg_tps": 2.0}}]}))
    b.write_text(json.dumps({"rows": [{"model": "m", "llama": {"pp_tps": 2.0, "tg_tps": 2.0}}]}))
    rows = sbs.combine([str(a), str(b)])
    assert rows == [{"model": "m", "ours": {"pp_tps": 1.0, "tg_tps": 2.0}, "llama": {"pp_tps": 2.0, "tg_tps": 2.0}}]
    assert "0.50x" in sbs.format_table(rows) and "1.00x" in sbs.format_table(rows)


def test_llama_bench_json_is_read(sbs, tmp_path):
    # what `llama-bench -p 512 -n 128 -o json` prints: one record per test
    out = [{"build_commit": "x", "gpu_info": "NVIDIA H200", "n_prompt": 512, "n_gen": 0, "avg_ts": 9000.5,
            "samples_ts": [9000.0, 9001.0, 9000.5]},
           {"build_commit": "x", "gpu_info": "NVIDIA H200", "n_prompt": 0, "n_gen": 128, "avg_ts": 190.25,
            "samples_ts": [190.0, 190.5, 190.25]}]
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + json.dumps(out) + "\nEOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    res = sbs.run_llama(fake, tmp_path / "m.gguf", 512, 128, 3)
    assert res["pp_tps"] == 9000.5 and res["tg_tps"] == 190.25
    assert res["tg_runs"] == [190.0, 190.5, 190.25] and res["gpu_info"] == "NVIDIA H200"
    assert "-fa 1 -ngl 99 -o json" in res["command"]


def test_cmake_missing_is_a_clear_error(sbs, tmp_path, monkeypatch):
    monkeypatch.setattr(sbs.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="cmake is not on PATH"):
        sbs.start_build(tmp_path, tmp_path / "b", "cuda", None, 2, tmp_path / "log")


@pytest.mark.skipif(not LLAMA_CPP.is_dir(), reason=f"no llama.cpp source at {LLAMA_CPP}")
def test_trim_keeps_the_llama_bench_and_server_closure_only(sbs, tmp_path):
    dest = tmp_path / "src"
    size = sbs.trim(LLAMA_CPP, dest)
    assert size < 40 * 2**20
    for kept in ("tools/llama-bench/llama-bench.cpp", "ggml/src/ggml-cuda/mmq.cu", "ggml/src/ggml-hip/CMakeLists.txt",
                 "ggml/src/ggml-cpu/ggml-cpu.c", "src/llama.cpp", "common/common.cpp", "vendor/nlohmann/json.hpp",
                 "tools/server/server.cpp", "tools/mtmd/mtmd.cpp", "tools/ui/ui.cpp.in", "scripts/ui-assets.cmake"):
        assert (dest / kept).is_file(), kept
    for gone in ("tests", "docs", "examples", "models", "tools/cli", "tools/ui/src", "tools/server/tests",
                 "ggml/src/ggml-vulkan", "ggml/src/ggml-metal"):
        assert not (dest / gone).exists(), gone
    tools = (dest / "tools/CMakeLists.txt").read_text()
    assert "# trimmed by side_by_side.py: add_subdirectory(cli)" in tools
    assert "# trimmed" not in next(line for line in tools.splitlines() if "add_subdirectory(server)" in line)
