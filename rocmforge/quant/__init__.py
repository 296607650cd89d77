"""Quantised tensor formats: the registry, and CPU dequantize/quantize.

>>> from rocmforge.quant import dequantize, quantize, get_format
>>> raw = quantize(np.ones((4, 64), np.float32), "Q8_0")   # (4, 68) uint8
>>> dequantize(raw, "Q8_0", (4, 64))                        # (4, 64) float32

Shapes are in NumPy order: the last axis is contiguous and is cut into blocks,
so it must be a multiple of the format's block size. Raw data is the file's
bytes, row after row. See ``formats.py`` for the registry and ``mx.py`` for our
OCP MX block layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QuantFormatError
from .formats import QuantFormat, formats, from_gguf_type, get_format

__all__ = ["QuantFormat", "dequantize", "formats", "from_gguf_type", "get_format", "nbytes", "quantize"]


def _where(qtype: str, shape: tuple[int, ...], name: str | None) -> str:
    return f"{qtype} tensor {name!r} of shape {shape}" if name else f"{qtype} tensor of shape {shape}"


def _shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def nbytes(qtype: str | QuantFormat, shape: Sequence[int] | int, *, name: str | None = None) -> int:
    """Bytes that a tensor of ``shape`` (NumPy order) takes in format ``qtype``."""
    fmt = get_format(qtype)
    shape = _shape(shape)
    if any(s < 0 for s in shape):
        raise QuantFormatError(f"{_where(fmt.name, shape, name)}: negative dimension")
    n = int(np.prod(shape, dtype=np.int64))
    last = shape[-1] if shape else 1
    if last % fmt.block_size:
        raise QuantFormatError(
            f"{_where(fmt.name, shape, name)}: the last axis ({last}) must be a multiple "
            f"of the {fmt.name} block size ({fmt.block_size})")
    return n // fmt.block_size * fmt.type_size


def _as_bytes(raw: object, fmt: QuantFormat, where: str) -> np.ndarray:
    """raw -> 1-D uint8 view (no copy when raw is contiguous)."""
    if isinstance(raw, np.ndarray):
        dt = raw.dtype
        if dt == np.uint8:
            return raw.reshape(-1)
        ok = dt.itemsize == 1 and dt.kind in "iu"              # int8 bytes
        if fmt.kind == "float":
            ok = ok or dt == fmt.dtype or (dt.kind in "iu" and dt.itemsize == fmt.type_size)
        if not ok:
            expected = f"uint8 bytes or {fmt.dtype}" if fmt.kind == "float" else "uint8 bytes"
            raise QuantFormatError(f"{where}: data has dtype {dt}, expected {expected}")
        return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
    raise QuantFormatError(
        f"{where}: data is a {type(raw).__name__}, expected bytes, memoryview or a NumPy array")


def dequantize(raw: object, qtype: str | QuantFormat, shape: Sequence[int] | int, *,
               name: str | None = None) -> np.ndarray:
    """Decode raw block bytes of ``qtype`` into a float32 array of ``shape``.

    ``raw`` is bytes, a memoryview or a 1-D uint8 array (for plain types also
    a typed array, e.g. float16 for F16). ``name`` only improves error messages.
    """
    fmt = get_format(qtype)
    shape = _shape(shape)
    where = _where(fmt.name, shape, name)
    expected = nbytes(fmt, shape, name=name)
    data = _as_bytes(raw, fmt, where)
    if data.size != expected:
        n_blocks = expected // fmt.type_size
        raise QuantFormatError(
            f"{where}: got {data.size} bytes, expected {expected} "
            f"({n_blocks} blocks of {fmt.block_size} elements x {fmt.type_size} bytes)")
    if expected == 0:
        return np.zeros(shape, np.float32)
    row_elems = shape[-1] if shape else 1
    rows = data.reshape(-1, row_elems // fmt.block_size * fmt.type_size)
    assert fmt.decode is not None
    return fmt.decode(rows).reshape(shape)


def quantize(x: np.ndarray, qtype: str | QuantFormat) -> np.ndarray:
    """Encode ``x`` to ``qtype``: uint8 of shape ``(*x.shape[:-1], row_bytes)``.

    The last axis must be a multiple of the block size. GGUF types use
    ``gguf.quants.quantize`` (where it has an encoder), MX types ours.
    """
    fmt = get_format(qtype)
    x = np.asarray(x)
    if x.ndim == 0:
        x = x.reshape(1)
    if fmt.encode is None:
        can = sorted(n for n, f in formats().items() if f.encode is not None)
        raise QuantFormatError(
            f"cannot quantize to {fmt.name} (only decoding is implemented): "
            f"expected one of {', '.join(can)}")
    if x.dtype.kind not in "fiu" and x.dtype.name not in ("bfloat16",):
        raise QuantFormatError(f"cannot quantize an array of dtype {x.dtype} to {fmt.name}")
    row_bytes = nbytes(fmt, x.shape[-1:])
    if x.size == 0:
        return np.zeros((*x.shape[:-1], row_bytes), np.uint8)
    rows = x.reshape(-1, x.shape[-1])
    if fmt.kind == "block":
        rows = rows.astype(np.float32, copy=False)
    return np.asarray(fmt.encode(rows), dtype=np.uint8).reshape(*x.shape[:-1], row_bytes)
