"""Property: any byte flips, field overwrites or truncation of a valid small GGUF
(or safetensors file) either loads or raises ModelFormatError, never anything else."""

from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from badfiles import gguf_layout, write_small_gguf, write_small_hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rocmforge.errors import ModelFormatError
from rocmforge.loaders.gguf import read_gguf
from rocmforge.loaders.hf import read_hf_folder

_WORK = Path(tempfile.mkdtemp(prefix="rocmforge-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)
VALID = write_small_gguf(_WORK / "valid.gguf").read_bytes()
LAYOUT = gguf_layout(VALID)
HEADER_END = LAYOUT["infos_end"]

INTERESTING = [0, 1, 2, 3, 4, 5, 31, 32, 33, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
               2**40, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]
SETTINGS = settings(max_examples=200, deadline=2000, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _touch(lf) -> None:
    """Read every byte of every tensor: views must lie inside the file."""
    for t in lf.tensors.values():
        assert t.data.nbytes == t.nbytes
        np.frombuffer(t.data.tobytes(), np.uint8).sum()


def _load_or_clean_error(load, path) -> None:
    try:
        lf = load(path)
    except ModelFormatError as e:
        assert str(path) in str(e)
        return
    _touch(lf)


flips = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8)
header_flips = st.lists(st.tuples(st.integers(0, HEADER_END - 1), st.integers(0, 255)), min_size=1, max_size=4)
field_writes = st.lists(st.tuples(st.integers(0, HEADER_END - 8), st.sampled_from(INTERESTING),
                                  st.sampled_from(["<Q", "<I"])), max_size=3)
cuts = st.one_of(st.none(), st.integers(0, len(VALID)))


def _mutate(data: bytes, flips, writes=(), cut=None) -> bytes:
    b = bytearray(data)
    for pos, value in flips:
        b[pos] = value
    for pos, value, fmt in writes:
        if fmt == "<I":
            value &= 0xFFFFFFFF
        struct.pack_into(fmt, b, pos, value)
    return bytes(b if cut is None else b[:cut])


@SETTINGS
@given(flips=flips, writes=field_writes, cut=cuts)
def test_gguf_mutations(flips, writes, cut):
    p = _WORK / "m.gguf"
    p.write_bytes(_mutate(VALID, flips, writes, cut))
    _load_or_clean_error(read_gguf, p)


@SETTINGS
@given(flips=header_flips)
def test_gguf_header_byte_flips(flips):
    p = _WORK / "h.gguf"
    p.write_bytes(_mutate(VALID, flips))
    _load_or_clean_error(read_gguf, p)


@pytest.mark.parametrize("field", ["n_dims_at", "dims_at", "type_at", "offset_at"])
@pytest.mark.parametrize("value", INTERESTING)
def test_gguf_every_tensor_field(field, value):
    """Deterministic sweep: each interesting value in each tensor-info field of one tensor."""
    info = LAYOUT["tensors"]["blk.0.attn_k.weight"]
    fmt = "<I" if field in ("n_dims_at", "type_at") else "<Q"
    p = _WORK / f"t-{field}-{value}.gguf"
    p.write_bytes(_mutate(VALID, [], [(info[field], value, fmt)]))
    _load_or_clean_error(read_gguf, p)


_HF = write_small_hf(_WORK / "hf", extra_files=False)
ST_VALID = (_HF / "model.safetensors").read_bytes()
(ST_HEADER_END,) = struct.unpack_from("<Q", ST_VALID, 0)


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, ST_HEADER_END + 7), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(ST_VALID))))
def test_safetensors_mutations(flips, cut):
    (_HF / "model.safetensors").write_bytes(_mutate(ST_VALID, flips, (), cut))
    try:
        lf = read_hf_folder(_HF)
    except ModelFormatError as e:
        assert "model.safetensors" in str(e) or str(_HF) in str(e)
        return
    _touch(lf)
