"""transformers' MXFP4 expert layout (the released gpt-oss checkpoints) -> MXFP4 RawTensors.

A checkpoint with ``quantization_config.quant_method == "mxfp4"`` stores each
expert matrix ``P`` of ``model.layers.{i}.mlp.experts`` as two uint8 tensors
(see transformers' ``integrations/mxfp4.py``)::

    P_blocks  (n_expert, rows, K / 32, 16)   FP4 E2M1 codes, element 2j in the low
                                             nibble of byte j, 2j + 1 in the high one
    P_scales  (n_expert, rows, K / 32)       E8M0 exponents: block value = 2**(s - 127) * code

``rows`` are the output features and ``K`` the input features (a Linear's
(out, in)), which is our layout; the nibble order is that of our OCP
``MXFP4_E2M1`` blocks (scale byte, then 16 code bytes), so conversion only
interleaves each block's scale byte with its codes: no value is decoded.
``gate_up_proj`` holds gate and up rows interleaved (gate = even rows); they
are split here, as llama.cpp's converter does, by copying whole rows.
The results are named like Linear weights (``experts.gate_proj.weight``,
``experts.up_proj.weight``, ``experts.down_proj.weight``, shape (n_expert, out, in)),
so a tensor map takes them without a transform.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ModelFormatError
from .base import RawTensor

logger = logging.getLogger(__name__)

QTYPE = "MXFP4_E2M1"
_SUFFIX_B, _SUFFIX_S = "_blocks", "_scales"


def pack_blocks(blocks: np.ndarray, scales: np.ndarray, where: str) -> np.ndarray:
    """(..., G, 16) codes + (..., G) scales -> (..., G * 17) uint8 MXFP4_E2M1 rows."""
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ModelFormatError(f"{where}: MXFP4 blocks/scales are {blocks.dtype}/{scales.dtype}; expected uint8")
    if blocks.ndim < 2 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise ModelFormatError(f"{where}: MXFP4 blocks {blocks.shape} and scales {scales.shape} do not match; "
                               "expected blocks (..., G, 16) and scales (..., G)")
    out = np.empty((*scales.shape, 17), np.uint8)
    out[..., 0] = scales
    out[..., 1:] = blocks
    return out.reshape(*scales.shape[:-1], scales.shape[-1] * 17)


def _raw(name: str, rows: np.ndarray, n_groups: int) -> RawTensor:
    shape = (*rows.shape[:-1], n_groups * 32)
    return RawTensor(name, QTYPE, tuple(int(s) for s in shape), np.ascontiguousarray(rows).reshape(-1))


def convert_mxfp4_experts(tensors: dict[str, RawTensor], where: str) -> dict[str, RawTensor]:
    """Replace every ``*_blocks`` / ``*_scales`` pair by MXFP4 RawTensors (other tensors pass through)."""
    out = {n: t for n, t in tensors.items() if not n.endswith((_SUFFIX_B, _SUFFIX_S))}
    bases = sorted({n[: -len(_SUFFIX_B)] for n in tensors if n.endswith(_SUFFIX_B)}
                   | {n[: -len(_SUFFIX_S)] for n in tensors if n.endswith(_SUFFIX_S)})
    for base in bases:
        b, s = tensors.get(base + _SUFFIX_B), tensors.get(base + _SUFFIX_S)
        if b is None or s is None:
            raise ModelFormatError(f"{where}: MXFP4 tensor {base!r} has only its "
                                   f"{'blocks' if s is None else 'scales'}; expected both {base}_blocks and "
                                   f"{base}_scales")
        rows = pack_blocks(np.asarray(b.data), np.asarray(s.data), f"{where}: {base}")
        n_groups = s.shape[-1]
        if base.endswith(".gate_up_proj"):
            if rows.ndim < 2 or rows.shape[-2] % 2:
                raise ModelFormatError(f"{where}: {base} has {rows.shape[-2]} rows; expected gate and up rows "
                                       "interleaved (an even count)")
            stem = base[: -len(".gate_up_proj")]
            out[stem + ".gate_proj.weight"] = _raw(stem + ".gate_proj.weight", rows[..., 0::2, :], n_groups)
            out[stem + ".up_proj.weight"] = _raw(stem + ".up_proj.weight", rows[..., 1::2, :], n_groups)
        else:
            out[base + ".weight"] = _raw(base + ".weight", rows, n_groups)
    logger.debug("%s: %d MXFP4 tensor pair(s) packed as %s", where, len(bases), QTYPE)
    return out
