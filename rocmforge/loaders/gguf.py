"""GGUF files: a bounded, validating pre-scan of the header, then gguf-py's reader.

The pre-scan hand-parses the header (magic, version, key/values, tensor infos)
with every count, length and offset checked against the file size *before* it
is used, so a bad file gives one :class:`ModelFormatError` in time and memory
bounded by the file size. Tensors are then laid out by ``gguf.GGUFReader``
(memory-mapped; quantised tensors stay quantised).

GGUF layout (little-endian, or all big-endian)::

    "GGUF" u32 version  u64 n_tensors  u64 n_kv
    n_kv  x (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to general.alignment, then tensor data (offsets relative to here)

    string = u64 length + UTF-8 bytes;  array = u32 item_type + u64 count + items
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField

from ..errors import ModelFormatError
from .base import LoadedFile, RawTensor

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 8
# Far above any real tokenizer (~260k tokens, ~500k merges) but keeps a lying
# file from building tens of millions of Python objects.
MAX_METADATA_ITEMS = 1 << 24
MAX_METADATA_STRINGS = 1 << 22

_HEADER_SIZE = 24                    # magic, version, n_tensors, n_kv
_MIN_KV_SIZE = 8 + 4 + 1             # empty key, type, one-byte value
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset

# value type -> (struct code, size)
_SCALARS: dict[int, tuple[str, int]] = {
    GGUFValueType.UINT8: ("B", 1), GGUFValueType.INT8: ("b", 1),
    GGUFValueType.UINT16: ("H", 2), GGUFValueType.INT16: ("h", 2),
    GGUFValueType.UINT32: ("I", 4), GGUFValueType.INT32: ("i", 4),
    GGUFValueType.FLOAT32: ("f", 4), GGUFValueType.BOOL: ("B", 1),
    GGUFValueType.UINT64: ("Q", 8), GGUFValueType.INT64: ("q", 8),
    GGUFValueType.FLOAT64: ("d", 8),
}
_MIN_ITEM_SIZE = {**{t: s for t, (_, s) in _SCALARS.items()},
                  GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
# Tensor types gguf-py hands back as typed arrays (everything else: raw bytes).
_TYPED = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
          "I16": np.int16, "I32": np.int32, "I64": np.int64}


@dataclass
class TensorInfo:
    name: str
    qtype: str
    ne: tuple[int, ...]        # GGUF order: innermost first
    offset: int                # relative to the data section
    nbytes: int


@dataclass
class GGUFHeader:
    """What the pre-scan found; every field already checked against the file size."""

    version: int
    byte_order: str            # "<" or ">"
    metadata: dict[str, Any]
    value_types: dict[str, int]
    kv_end: int                # offset just past the key/value section
    alignment: int
    data_offset: int           # start of the tensor data section
    file_size: int
    tensors: list[TensorInfo] = field(default_factory=list)


def _fail(path: str, found: str, expected: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: not a valid GGUF file: {found}; expected {expected}")


class _Cursor:
    """Reads from a buffer, refusing to read past its end."""

    def __init__(self, buf: Any, size: int, path: str, order: str = "<"):
        self.buf, self.size, self.path, self.order, self.pos = buf, size, path, order, 0
        self.n_strings = 0
        self.n_items = 0

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.remaining():
            raise _fail(self.path, f"{what} needs {n} bytes at offset {self.pos} but only "
                        f"{self.remaining()} remain (truncated or lying length)",
                        f"a file of at least {self.pos + n} bytes")

    def scalar(self, code: str, size: int, what: str) -> Any:
        self.need(size, what)
        (v,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar("I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", 8, what)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def name(self, what: str) -> str:
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(self.path, f"{what} {raw[:64]!r} is not UTF-8", "a UTF-8 name") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            self.n_strings += 1
            return self.raw_string(what).decode("utf-8", errors="replace")
        if vtype in _SCALARS:
            code, size = _SCALARS[vtype]
            v = self.scalar(code, size, what)
            return bool(v) if vtype == GGUFValueType.BOOL else v
        if vtype == GGUFValueType.ARRAY:
            return self.array(what, depth)
        raise _fail(self.path, f"{what} has unknown value type {vtype}",
                    f"one of {sorted(int(t) for t in GGUFValueType)}")

    def array(self, what: str, depth: int) -> list[Any]:
        if depth >= MAX_ARRAY_DEPTH:
            raise _fail(self.path, f"{what} nests arrays {depth + 1} deep",
                        f"at most {MAX_ARRAY_DEPTH} levels")
        itype = self.u32(f"item type of {what}")
        count = self.u64(f"length of {what}")
        if itype not in _MIN_ITEM_SIZE:
            raise _fail(self.path, f"{what} has unknown item type {itype}",
                        f"one of {sorted(int(t) for t in GGUFValueType)}")
        min_size = _MIN_ITEM_SIZE[itype]
        if count > self.remaining() // min_size:
            raise _fail(self.path, f"{what} claims {count} items of at least {min_size} bytes but only "
                        f"{self.remaining()} bytes remain", "an array that fits in the file")
        self.n_items += count
        if self.n_items > MAX_METADATA_ITEMS:
            raise _fail(self.path, f"metadata arrays hold more than {MAX_METADATA_ITEMS} items in all",
                        "a realistic amount of metadata")
        if itype in _SCALARS:
            code, size = _SCALARS[itype]
            arr = np.frombuffer(self.buf[self.pos:self.pos + count * size],
                                dtype=np.dtype(code).newbyteorder(self.order))
            self.pos += count * size
            if itype == GGUFValueType.BOOL:
                arr = arr != 0
            return arr.tolist()
        if itype == GGUFValueType.STRING and self.n_strings + count > MAX_METADATA_STRINGS:
            raise _fail(self.path, f"metadata holds more than {MAX_METADATA_STRINGS} strings",
                        "a realistic amount of metadata")
        return [self.value(itype, f"{what}[{i}]", depth + 1) for i in range(count)]


def scan_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and validate a GGUF header without trusting any count, length or offset in it."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size < _HEADER_SIZE:
                head = f.read(4)
                if head != GGUF_MAGIC[:len(head)]:
                    raise _fail(path, f"magic {head!r} in a {size}-byte file",
                                f"{GGUF_MAGIC!r} (is this a GGUF file?)")
                raise _fail(path, f"only {size} bytes (truncated header)", f"at least {_HEADER_SIZE} bytes")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _scan(mm, size, path)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read GGUF file: {e.strerror or e}") from None


def _scan(mm: Any, size: int, path: str) -> GGUFHeader:
    if mm[:4] != GGUF_MAGIC:
        raise _fail(path, f"magic {bytes(mm[:4])!r}", f"{GGUF_MAGIC!r} (is this a GGUF file?)")
    (version,) = struct.unpack_from("<I", mm, 4)
    order = "<"
    if version & 0xFFFF == 0 and version != 0:   # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", mm, 4)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(path, f"GGUF version {version}", f"version {' or '.join(map(str, SUPPORTED_VERSIONS))}")
    cur = _Cursor(mm, size, path, order)
    cur.pos = 8
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    if n_kv > cur.remaining() // _MIN_KV_SIZE or n_tensors > cur.remaining() // _MIN_TENSOR_INFO_SIZE \
            or n_kv * _MIN_KV_SIZE + n_tensors * _MIN_TENSOR_INFO_SIZE > cur.remaining():
        raise _fail(path, f"{n_tensors} tensors and {n_kv} key/values, which cannot fit in {size} bytes",
                    "counts that fit in the file")

    metadata: dict[str, Any] = {}
    value_types: dict[str, int] = {}
    for i in range(n_kv):
        key = cur.name(f"key #{i}")
        if key in metadata:
            raise _fail(path, f"duplicate key {key!r}", "each key once")
        vtype = cur.u32(f"value type of {key!r}")
        metadata[key] = cur.value(vtype, f"value of {key!r}")
        value_types[key] = vtype
    kv_end = cur.pos

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if value_types["general.alignment"] != GGUFValueType.UINT32:
            raise _fail(path, f"general.alignment of value type {value_types['general.alignment']}",
                        "a UINT32")
        if alignment == 0 or alignment & (alignment - 1):
            raise _fail(path, f"general.alignment = {alignment}", "a non-zero power of two")

    infos: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = cur.name(f"name of tensor #{i}")
        if name in seen:
            raise _fail(path, f"duplicate tensor name {name!r}", "each tensor name once")
        seen.add(name)
        n_dims = cur.u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _fail(path, f"tensor {name!r} with {n_dims} dimensions", f"1 to {MAX_DIMS}")
        ne = tuple(cur.u64(f"dimension {d} of {name!r}") for d in range(n_dims))
        if 0 in ne:
            raise _fail(path, f"tensor {name!r} with a zero dimension, ne={list(ne)}", "every dimension >= 1")
        type_id = cur.u32(f"type of {name!r}")
        try:
            gtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[gtype]
        except (ValueError, KeyError):
            raise _fail(path, f"tensor {name!r} with unknown GGML type id {type_id}",
                        "a type id known to gguf " + str(sorted(t.value for t in GGMLQuantizationType))) from None
        offset = cur.u64(f"data offset of {name!r}")
        n_elements = 1
        for d in ne:
            n_elements *= d
            if n_elements > size * block:     # cannot fit however it is packed
                raise _fail(path, f"tensor {name!r} with shape ne={list(ne)} (more elements than the "
                            f"{size}-byte file could hold)", "dimensions that fit in the file")
        if ne[0] % block:
            raise _fail(path, f"tensor {name!r} of type {gtype.name} with row length {ne[0]}",
                        f"a multiple of the block size {block}")
        if offset % alignment:
            raise _fail(path, f"tensor {name!r} at data offset {offset}", f"a multiple of the alignment {alignment}")
        infos.append(TensorInfo(name, gtype.name, ne, offset, n_elements // block * type_size))

    data_offset = -(-cur.pos // alignment) * alignment
    data_size = size - data_offset
    prev_end, prev_name = 0, None
    for t in sorted(infos, key=lambda t: t.offset):
        if t.offset + t.nbytes > data_size:
            raise _fail(path, f"tensor {t.name!r} ({t.qtype}, {t.nbytes} bytes at data offset {t.offset}) ends "
                        f"past the end of the file ({max(data_size, 0)} data bytes; truncated?)",
                        "tensor data inside the file")
        if t.offset < prev_end:
            raise _fail(path, f"tensor {t.name!r} at data offset {t.offset} overlaps {prev_name!r} "
                        f"(which ends at {prev_end})", "non-overlapping tensor data")
        prev_end, prev_name = t.offset + t.nbytes, t.name
    return GGUFHeader(version, order, metadata, value_types, kv_end, alignment, data_offset, size, infos)


class _TensorReader(GGUFReader):
    """gguf's reader, minus its re-parse of the key/value section.

    gguf-py builds a NumPy view per array item (about 1 KB each, over a second for
    a 50k-token vocabulary); the pre-scan has already parsed and checked it, so
    we jump straight to the tensor infos and hand it only general.alignment."""

    def __init__(self, path: str, header: GGUFHeader):
        self._rf_header = header
        super().__init__(path)

    def _build_fields(self, offs: int, count: int) -> int:
        h = self._rf_header
        if "general.alignment" in h.metadata:
            value = np.array([h.alignment], dtype=np.uint32)
            self._push_field(ReaderField(offs, "general.alignment", [value], [0], [GGUFValueType.UINT32]),
                             skip_sum=True)
        return h.kv_end


def _open_reader(path: str, header: GGUFHeader) -> GGUFReader:
    # _build_fields is internal to gguf-py; fall back to the plain reader if it goes away.
    cls = _TensorReader if hasattr(GGUFReader, "_build_fields") else None
    try:
        reader = cls(path, header) if cls else GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: gguf could not read the file: {e}") from None
    if reader.data_offset != header.data_offset or len(reader.tensors) != len(header.tensors):
        raise ModelFormatError(f"{path}: gguf's reader disagrees with the header scan "
                               f"(data offset {reader.data_offset} vs {header.data_offset}, "
                               f"{len(reader.tensors)} vs {len(header.tensors)} tensors)")
    return reader


def read_gguf(path: str | os.PathLike[str]) -> LoadedFile:
    """Load a GGUF file: metadata as plain Python values, tensors as memory-mapped raw data.

    Raises ModelFormatError for anything malformed, truncated or inconsistent."""
    path = os.fspath(path)
    header = scan_header(path)
    reader = _open_reader(path, header)
    tensors: dict[str, RawTensor] = {}
    for info, rt in zip(header.tensors, reader.tensors):
        if rt.name != info.name or int(rt.data.nbytes) != info.nbytes:
            raise ModelFormatError(f"{path}: gguf's reader disagrees with the header scan about tensor "
                                   f"{info.name!r} ({rt.name!r}, {rt.data.nbytes} vs {info.nbytes} bytes)")
        shape = tuple(reversed(info.ne))
        if info.qtype in _TYPED:
            data = rt.data.reshape(shape)
        elif info.qtype == "BF16":
            order = "<" if reader.byte_order == "I" else ">"
            data = rt.data.reshape(-1).view(np.dtype(np.uint16).newbyteorder(order)).reshape(shape)
        else:
            data = rt.data.reshape(-1)
        tensors[info.name] = RawTensor(info.name, info.qtype, shape, data)
    logger.debug("%s: GGUF v%d, %d keys, %d tensors", path, header.version, len(header.metadata), len(tensors))
    extra = {"gguf_version": header.version, "alignment": header.alignment,
             "data_offset": header.data_offset, "byte_order": header.byte_order,
             "value_types": header.value_types}
    return LoadedFile("gguf", path, header.metadata, tensors, header.file_size, extra)
