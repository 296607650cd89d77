"""The bad-file corpus: each case writes a valid small file, breaks one thing, and
says which word the ModelFormatError message must contain.

A case is ``Case(id, kind, match, build)``: ``build(tmp_dir) -> path``; ``kind``
is "gguf" (path is a .gguf file) or "hf" (path is a model folder).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gguf_layout, safetensors_bytes, write_small_gguf, write_small_hf

U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    match: str
    build: Callable[[Path], Path]


# -- GGUF ----------------------------------------------------------------------

def valid_gguf_bytes(tmp: Path, alignment: int | None = None) -> bytes:
    return write_small_gguf(tmp / "valid.gguf", alignment=alignment).read_bytes()


def _gguf(mutate: Callable[[bytearray, dict], bytes | bytearray | None], alignment: int | None = None):
    def build(tmp: Path) -> Path:
        data = bytearray(valid_gguf_bytes(tmp, alignment))
        out = mutate(data, gguf_layout(bytes(data)))
        p = tmp / "bad.gguf"
        p.write_bytes(bytes(data if out is None else out))
        return p
    return build


def _put(fmt: str, at: Callable[[dict], int], value) -> Callable[[bytearray, dict], None]:
    def mutate(data: bytearray, lay: dict) -> None:
        struct.pack_into("<" + fmt, data, at(lay), value)
    return mutate


def _tensor(name: str, field: str, extra: int = 0) -> Callable[[dict], int]:
    return lambda lay: lay["tensors"][name][field] + extra


def _kv(key: str, field: str, extra: int = 0) -> Callable[[dict], int]:
    return lambda lay: lay["kv"][key][field] + extra


def _replace_once(old: bytes, new: bytes, nth: int = 0) -> Callable[[bytearray, dict], bytes]:
    assert len(old) == len(new)

    def mutate(data: bytearray, lay: dict) -> bytes:
        pos = -1
        for _ in range(nth + 1):
            pos = bytes(data).index(old, pos + 1)
        data[pos:pos + len(old)] = new
        return data
    return mutate


def _truncate(keep: Callable[[bytearray, dict], int]) -> Callable[[bytearray, dict], bytes]:
    return lambda data, lay: bytes(data[:keep(data, lay)])


def _raw_gguf(data: bytes):
    def build(tmp: Path) -> Path:
        p = tmp / "raw.gguf"
        p.write_bytes(data)
        return p
    return build


def _nested_arrays(tmp: Path) -> Path:
    """A hand-written GGUF with one key whose value is arrays nested 64 deep."""
    body = struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
    for _ in range(63):
        body += struct.pack("<IQ", 9, 1)
    body += struct.pack("<IQ", 4, 1) + struct.pack("<I", 7)
    p = tmp / "nested.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    return p


def _many_tiny_tensors(tmp: Path) -> Path:
    """A lying tensor count that just fits the count check: every info after the first is garbage."""
    p = tmp / "counts.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 100, 0) + bytes(100 * 32))
    return p


def _deep_string_array(tmp: Path) -> Path:
    """One array claiming 2**40 strings in a 1 KB file."""
    p = tmp / "strings.gguf"
    body = struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9) + struct.pack("<IQ", 8, 2**40) + bytes(1000)
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    return p


GGUF_CASES = [
    Case("empty", "gguf", "bytes", _raw_gguf(b"")),
    Case("magic-only", "gguf", "truncated", _raw_gguf(b"GGUF")),
    Case("bad-magic", "gguf", "magic", _gguf(_replace_once(b"GGUF", b"GGML"))),
    Case("header-cut", "gguf", "truncated", _gguf(_truncate(lambda d, lay: 20))),
    Case("version-1", "gguf", "version", _gguf(_put("I", lambda lay: 4, 1))),
    Case("version-99", "gguf", "version", _gguf(_put("I", lambda lay: 4, 99))),
    Case("version-0", "gguf", "version", _gguf(_put("I", lambda lay: 4, 0))),
    Case("n-tensors-max", "gguf", "fit", _gguf(_put("Q", lambda lay: 8, U64_MAX))),
    Case("n-kv-max", "gguf", "fit", _gguf(_put("Q", lambda lay: 16, U64_MAX))),
    Case("n-kv-plus-one", "gguf", "remain", _gguf(_put("Q", lambda lay: 16, 18))),
    Case("n-tensors-lying", "gguf", "dimension", _many_tiny_tensors),
    Case("key-length-max", "gguf", "remain", _gguf(_put("Q", _kv("general.name", "start"), U64_MAX))),
    Case("string-length-past-end", "gguf", "remain",
         _gguf(_put("Q", _kv("general.name", "value_at"), 10**9))),
    Case("array-length-max", "gguf", "items",
         _gguf(_put("Q", _kv("tokenizer.ggml.tokens", "value_at", 4), U64_MAX))),
    Case("array-length-lying", "gguf", "items",
         _gguf(_put("Q", _kv("tokenizer.ggml.scores", "value_at", 4), 10**6))),
    Case("string-array-2e40", "gguf", "items", _deep_string_array),
    Case("unknown-value-type", "gguf", "value type", _gguf(_put("I", _kv("general.name", "type_at"), 99))),
    Case("unknown-array-item-type", "gguf", "item type",
         _gguf(_put("I", _kv("tokenizer.ggml.tokens", "value_at"), 77))),
    Case("nested-arrays-64-deep", "gguf", "levels", _nested_arrays),
    Case("duplicate-key", "gguf", "duplicate", _gguf(_replace_once(b"tiny.dup2", b"tiny.dup1"))),
    Case("key-not-utf8", "gguf", "UTF-8", _gguf(_replace_once(b"tiny.dup2", b"tiny.\xff\xfe\xfd\xfc"))),
    Case("n-dims-5", "gguf", "dimensions", _gguf(_put("I", _tensor("token_embd.weight", "n_dims_at"), 5))),
    Case("n-dims-max", "gguf", "dimensions",
         _gguf(_put("I", _tensor("token_embd.weight", "n_dims_at"), 2**32 - 1))),
    Case("n-dims-0", "gguf", "dimensions", _gguf(_put("I", _tensor("token_embd.weight", "n_dims_at"), 0))),
    Case("zero-dim", "gguf", "zero", _gguf(_put("Q", _tensor("token_embd.weight", "dims_at", 8), 0))),
    Case("dim-overflow", "gguf", "elements",
         _gguf(lambda d, lay: [struct.pack_into("<QQ", d, lay["tensors"]["token_embd.weight"]["dims_at"],
                                                2**63, 2**63), None][1])),
    Case("dim-huge", "gguf", "elements", _gguf(_put("Q", _tensor("blk.0.attn_k.weight", "dims_at", 8), 2**60))),
    Case("unknown-type-99", "gguf", "unknown GGML type",
         _gguf(_put("I", _tensor("token_embd.weight", "type_at"), 99))),
    Case("removed-type-Q4_2", "gguf", "unknown GGML type",
         _gguf(_put("I", _tensor("token_embd.weight", "type_at"), 4))),
    Case("row-not-block-multiple", "gguf", "block size",
         _gguf(_put("Q", _tensor("blk.0.attn_k.weight", "dims_at"), 31))),
    Case("offset-past-end", "gguf", "past the end",
         _gguf(_put("Q", _tensor("blk.0.ffn_down.weight", "offset_at"), 2**40))),
    Case("offset-max", "gguf", "past the end",
         _gguf(_put("Q", _tensor("blk.0.ffn_down.weight", "offset_at"), 2**64 - 32))),
    Case("offset-misaligned", "gguf", "alignment",
         _gguf(lambda d, lay: struct.pack_into(
             "<Q", d, lay["tensors"]["blk.0.attn_q.weight"]["offset_at"],
             struct.unpack_from("<Q", d, lay["tensors"]["blk.0.attn_q.weight"]["offset_at"])[0] + 4))),
    Case("offset-misaligned-custom-alignment", "gguf", "alignment",
         _gguf(lambda d, lay: struct.pack_into(
             "<Q", d, lay["tensors"]["blk.0.attn_q.weight"]["offset_at"],
             struct.unpack_from("<Q", d, lay["tensors"]["blk.0.attn_q.weight"]["offset_at"])[0] + 32), 64)),
    Case("overlapping-tensors", "gguf", "overlaps",
         _gguf(_put("Q", _tensor("blk.0.attn_norm.weight", "offset_at"), 0))),
    Case("alignment-zero", "gguf", "power of two", _gguf(_put("I", _kv("general.alignment", "value_at"), 0), 64)),
    Case("alignment-three", "gguf", "power of two", _gguf(_put("I", _kv("general.alignment", "value_at"), 3), 64)),
    Case("alignment-wrong-type", "gguf", "UINT32",
         _gguf(_put("I", _kv("general.alignment", "type_at"), 5), 64)),
    Case("alignment-huge", "gguf", "alignment",
         _gguf(_put("I", _kv("general.alignment", "value_at"), 2**31), 64)),
    Case("duplicate-tensor", "gguf", "duplicate",
         _gguf(_replace_once(b"blk.0.attn_v.weight", b"blk.0.attn_k.weight"))),
    Case("tensor-name-not-utf8", "gguf", "UTF-8",
         _gguf(_replace_once(b"blk.0.attn_v.weight", b"blk.0.attn_\xff.weight"))),
    Case("cut-in-kv", "gguf", "remain", _gguf(_truncate(lambda d, lay: lay["kv"]["tokenizer.ggml.tokens"]["start"] + 40))),
    Case("cut-in-tensor-infos", "gguf", "remain",
         _gguf(_truncate(lambda d, lay: lay["tensors"]["blk.0.attn_v.weight"]["start"] + 10))),
    Case("cut-before-data", "gguf", "past the end", _gguf(_truncate(lambda d, lay: lay["infos_end"]))),
    Case("cut-in-data", "gguf", "past the end", _gguf(_truncate(lambda d, lay: len(d) - 10))),
    Case("not-a-file", "gguf", "read", lambda tmp: (tmp / "dir.gguf").mkdir() or tmp / "dir.gguf"),
]


# -- safetensors / HF folders ----------------------------------------------------

def _folder_with(st: bytes | None = None, *, config: str | None = None, files: dict[str, bytes] | None = None):
    def build(tmp: Path) -> Path:
        folder = tmp / "model"
        folder.mkdir()
        (folder / "config.json").write_text(config if config is not None else
                                            json.dumps({"architectures": ["LlamaForCausalLM"]}))
        if st is not None:
            (folder / "model.safetensors").write_bytes(st)
        for name, data in (files or {}).items():
            (folder / name).write_bytes(data)
        return folder
    return build


def _st(header: dict, data: bytes, **kw) -> bytes:
    return safetensors_bytes(header, data, **kw)


F32x4 = np.arange(4, dtype="<f4").tobytes()
GOOD_HEADER = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}


def _hdr(**changes) -> dict:
    h = json.loads(json.dumps(GOOD_HEADER))
    for name, entry in changes.items():
        h[name].update(entry)
    return h


def _raw_header(raw: bytes, data: bytes = F32x4) -> bytes:
    return struct.pack("<Q", len(raw)) + raw + data


def _sharded_then(edit: Callable[[Path], object]):
    """A valid sharded folder, then ``edit(folder)``."""
    def build(tmp: Path) -> Path:
        folder = write_small_hf(tmp / "model", sharded=True)
        edit(folder)
        return folder
    return build


def _edit_index(edit: Callable[[dict], None]):
    def build(tmp: Path) -> Path:
        folder = write_small_hf(tmp / "model", sharded=True)
        path = folder / "model.safetensors.index.json"
        index = json.loads(path.read_text())
        edit(index)
        path.write_text(json.dumps(index))
        return folder
    return build


def _swap_two(index: dict) -> None:
    wm = index["weight_map"]
    a, b = min(wm), max(wm)
    wm[a], wm[b] = wm[b], wm[a]


def _duplicate_across_files(tmp: Path) -> Path:
    folder = _folder_with(files={"a.safetensors": _st(GOOD_HEADER, F32x4),
                                 "b.safetensors": _st(GOOD_HEADER, F32x4)})(tmp)
    return folder


HF_CASES = [
    Case("st-tiny-file", "hf", "bytes", _folder_with(b"\x01\x02")),
    Case("st-header-len-max", "hf", "header", _folder_with(struct.pack("<Q", U64_MAX) + bytes(64))),
    Case("st-header-len-200MB", "hf", "header", _folder_with(struct.pack("<Q", 200_000_000) + bytes(64))),
    Case("st-header-past-eof", "hf", "truncated", _folder_with(struct.pack("<Q", 4096) + b"{}")),
    Case("st-not-json", "hf", "JSON", _folder_with(_raw_header(b"{not json!}     "))),
    Case("st-not-utf8", "hf", "JSON", _folder_with(_raw_header(b'{"\xff": 1}     '))),
    Case("st-json-list", "hf", "object", _folder_with(_raw_header(b"[1, 2, 3]       "))),
    Case("st-json-deep", "hf", "JSON", _folder_with(_raw_header(b"[" * 100_000 + b"]" * 100_000))),
    Case("st-entry-not-object", "hf", "object", _folder_with(_st({"a": [1, 2]}, b""))),
    Case("st-unknown-dtype", "hf", "dtype", _folder_with(_st(_hdr(a={"dtype": "Q4_K"}), F32x4))),
    Case("st-shape-negative", "hf", "shape", _folder_with(_st(_hdr(a={"shape": [-2]}), F32x4))),
    Case("st-shape-float", "hf", "shape", _folder_with(_st(_hdr(a={"shape": [2.0]}), F32x4))),
    Case("st-shape-bytes-mismatch", "hf", "bytes", _folder_with(_st(_hdr(a={"shape": [3]}), F32x4))),
    Case("st-shape-overflow", "hf", "bytes", _folder_with(_st(_hdr(a={"shape": [2**62, 2**62]}), F32x4))),
    Case("st-offsets-reversed", "hf", "data_offsets", _folder_with(_st(_hdr(a={"data_offsets": [8, 0]}), F32x4))),
    Case("st-offsets-negative", "hf", "data_offsets",
         _folder_with(_st(_hdr(a={"data_offsets": [-8, 0]}), F32x4))),
    Case("st-offsets-missing", "hf", "data_offsets", _folder_with(_st({"a": {"dtype": "F32", "shape": [2]}}, b""))),
    Case("st-overlap", "hf", "overlaps",
         _folder_with(_st(_hdr(b={"data_offsets": [4, 12]}, a={"data_offsets": [0, 8]}), F32x4[:12]))),
    Case("st-gap", "hf", "gap", _folder_with(_st(_hdr(a={"data_offsets": [0, 8]}, b={"data_offsets": [12, 20]}),
                                                 F32x4 + bytes(4)))),
    Case("st-trailing-bytes", "hf", "trailing", _folder_with(_st(GOOD_HEADER, F32x4 + b"junk"))),
    Case("st-truncated-data", "hf", "truncated", _folder_with(_st(GOOD_HEADER, F32x4[:12]))),
    Case("st-offset-past-end", "hf", "truncated",
         _folder_with(_st(_hdr(b={"data_offsets": [8, 2**40 + 8], "shape": [2**38]}), F32x4))),
    Case("st-duplicate-name", "hf", "duplicate",
         _folder_with(_raw_header(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                                  b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}'))),
    Case("st-metadata-not-object", "hf", "__metadata__",
         _folder_with(_st({**GOOD_HEADER, "__metadata__": [1]}, F32x4))),
    Case("hf-no-config", "hf", "config.json", _sharded_then(lambda f: (f / "config.json").unlink())),
    Case("hf-config-not-json", "hf", "JSON", _folder_with(_st(GOOD_HEADER, F32x4), config="{architectures:")),
    Case("hf-config-list", "hf", "object", _folder_with(_st(GOOD_HEADER, F32x4), config="[]")),
    Case("hf-no-architectures", "hf", "architectures",
         _folder_with(_st(GOOD_HEADER, F32x4), config='{"model_type": "llama"}')),
    Case("hf-architectures-empty", "hf", "architectures",
         _folder_with(_st(GOOD_HEADER, F32x4), config='{"architectures": []}')),
    Case("hf-no-weights", "hf", "safetensors", _folder_with(None)),
    Case("hf-only-bin", "hf", "convert", _folder_with(None, files={"pytorch_model.bin": b"\x80\x02"})),
    Case("hf-missing-shard", "hf", "missing", _sharded_then(
        lambda f: (f / "model-00002-of-00002.safetensors").unlink())),
    Case("hf-index-not-json", "hf", "JSON", _sharded_then(lambda f: (f / "model.safetensors.index.json").write_text("{"))),
    Case("hf-index-no-weight-map", "hf", "weight_map", _edit_index(lambda ix: ix.pop("weight_map"))),
    Case("hf-index-path-traversal", "hf", "outside",
         _edit_index(lambda ix: ix["weight_map"].update({"x": "../../etc/passwd"}))),
    Case("hf-index-wrong-shard", "hf", "index", _edit_index(_swap_two)),
    Case("hf-index-unknown-tensor", "hf", "index",
         _edit_index(lambda ix: ix["weight_map"].update({"ghost": "model-00001-of-00002.safetensors"}))),
    Case("hf-duplicate-across-files", "hf", "both", _duplicate_across_files),
    Case("hf-corrupt-shard", "hf", "header", _sharded_then(
        lambda f: (f / "model-00001-of-00002.safetensors").write_bytes(struct.pack("<Q", U64_MAX)))),
]

ALL_CASES = GGUF_CASES + HF_CASES
