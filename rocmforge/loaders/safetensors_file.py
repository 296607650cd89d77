"""One .safetensors file: a validated header, then NumPy views of a memory map.

We parse the header ourselves instead of going through ``safetensors.numpy``
because NumPy has no bfloat16 or float8: those come back as raw unsigned
integers of the same width, tagged with their safetensors dtype name.

Layout::

    u64 N (little-endian)   N bytes of JSON: {name: {dtype, shape, data_offsets: [begin, end]},
                                              "__metadata__": {str: str}}   (optional)
    tensor bytes, offsets relative to byte 8 + N, packed without gaps or overlap
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from .base import RawTensor

MAX_HEADER_SIZE = 100_000_000   # the safetensors library's own limit

# safetensors dtype -> NumPy dtype of the array we hand out (raw bits for the
# types NumPy lacks: BF16 as uint16, the float8 family as uint8).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),           # AMD Quark FP8 exports
    "F8_E4M3FNUZ": np.dtype("u1"), "F8_E5M2FNUZ": np.dtype("u1"),   # MI300 native FP8
    "F8_E8M0": np.dtype("u1"),                                      # MX block scales
}


def _fail(path: str, found: str, expected: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: not a valid safetensors file: {found}; expected {expected}")


def _no_duplicates(path: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in pairs:
            if k in d:
                raise _fail(path, f"duplicate key {k!r} in the header", "each tensor name once")
            d[k] = v
        return d
    return hook


def read_header(path: str) -> tuple[int, dict[str, Any], int]:
    """(data start, header dict, file size), with the header checked for lies."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"only {size} bytes", "an 8-byte header length and a JSON header")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_SIZE:
                raise _fail(path, f"a header of {n} bytes", f"at most {MAX_HEADER_SIZE} bytes")
            if 8 + n > size:
                raise _fail(path, f"a {n}-byte header in a {size}-byte file (truncated?)",
                            "the header inside the file")
            raw = f.read(n)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read safetensors file: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates(path))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"a header that is not JSON ({type(e).__name__}: {str(e)[:120]})",
                    "a UTF-8 JSON object") from None
    if not isinstance(header, dict):
        raise _fail(path, f"a JSON header of type {type(header).__name__}", "a JSON object")
    return 8 + n, header, size


def _check_entry(path: str, name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor {name!r} described by {type(entry).__name__}",
                    "an object with dtype, shape, data_offsets")
    dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise _fail(path, f"tensor {name!r} with unknown dtype {dtype!r}", f"one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise _fail(path, f"tensor {name!r} with shape {str(shape)[:80]}", "a list of non-negative integers")
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)
            and 0 <= offs[0] <= offs[1]):
        raise _fail(path, f"tensor {name!r} with data_offsets {str(offs)[:80]}", "[begin, end] with begin <= end")
    return dtype, tuple(shape), offs[0], offs[1]


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Tensors (memory-mapped views, qtype = safetensors dtype name) and the ``__metadata__`` dict."""
    path = os.fspath(path)
    start, header, size = read_header(path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _fail(path, f"__metadata__ of type {type(meta).__name__}", "an object of strings")
    entries = []
    for name, entry in header.items():
        dtype, shape, begin, end = _check_entry(path, name, entry)
        n = 1
        for s in shape:
            n *= s
        if n * DTYPES[dtype].itemsize != end - begin:
            raise _fail(path, f"tensor {name!r} of {dtype} {list(shape)} spanning {end - begin} bytes",
                        f"{n * DTYPES[dtype].itemsize} bytes for that shape and dtype")
        entries.append((begin, end, name, dtype, shape))
    entries.sort()
    pos = 0
    for begin, end, name, _, _ in entries:
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise _fail(path, f"tensor {name!r} at data offset {begin} {what}",
                        f"tensors packed back to back (next at {pos})")
        pos = end
    data_size = size - start
    if pos != data_size:
        found = (f"tensor data ending at {pos} but the file ends at {data_size} past the header"
                 + (" (truncated?)" if pos > data_size else " (trailing bytes)"))
        raise _fail(path, found, "the last tensor to end where the file ends")
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(data_size,)) if data_size else \
        np.zeros(0, np.uint8)
    tensors = {}
    for begin, end, name, dtype, shape in entries:
        data = mm[begin:end].view(DTYPES[dtype]).reshape(shape)
        tensors[name] = RawTensor(name, dtype, shape, data)
    return tensors, {str(k): str(v) for k, v in meta.items()}
