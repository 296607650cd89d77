"""AMD Quark exports: turn Quark's (weight, weight_scale) pairs into rocmforge tensors.

A Quark "real_quantized" Hugging Face export (``config.json`` has
``quantization_config.quant_method == "quark"``; checked against amd-quark
0.13) stores each quantised linear layer ``<m>`` as

* ``<m>.weight``: the element codes. MX FP4 is ``uint8 (out, in/2)``, element
  2j in the low nibble of byte j; MX FP6 is ``uint8 (out, in*3/4)``, 4 elements
  per 3 bytes as a little-endian 24-bit word (element k at bits 6k..6k+5); FP8
  is ``float8_e4m3fn``/``float8_e5m2`` ``(out, in)``.
* ``<m>.weight_scale``: for MX (``qscheme per_group``, ``group_size 32``,
  ``scale_format e8m0``) ``uint8 (out, in/32)``, the E8M0 byte of each group of
  32 along the last axis; for plain FP8 a float32 scalar (per_tensor), ``(out,)``
  (per_channel) or ``(out, in/group)`` (per_group), with ``w = code * scale``.
* optionally ``<m>.input_scale`` (static FP8 activation quantisation) and, on
  ``k_proj`` / ``v_proj``, ``<m>.output_scale``: the FP8 KV cache's scales.

What we hand back, one RawTensor per weight:

* MX weights become our MX block types (``MXFP4_E2M1``, ``MXFP6_E2M3``,
  ``MXFP6_E3M2``, ``MXFP8_E4M3``, ``MXFP8_E5M2``) by interleaving each scale
  byte in front of its 32 elements; the element packing is already ours
  (``rocmforge/quant/mx.py``), so this is lossless and bit-exact.
* FP8 with float scales (per tensor/channel/group) is dequantised to the
  model's dtype (``torch_dtype``/``dtype`` in config.json: BF16, F16 or F32;
  F32 when absent): one scale per tensor or row has no block format of ours.
* Weights Quark exported unquantised, or ``fake_quantized`` (QDQ floats), pass
  through; their scales are dropped.

Activations: each weight's layer config ``input_tensors`` becomes an
``ActQuant`` attached as ``raw.act`` (rocmforge.quant.act): MX (dynamic, e8m0
per 32, ``scale_calculation_mode`` even/floor/ceil) or FP8 per tensor (static
with the exported ``input_scale``, or dynamic). Anything else is refused.
:func:`quark_kv_scales` reads the KV cache's ``{layer: (k_scale, v_scale)}``;
:func:`layer_formats` describes each layer's weight / activation / KV formats.

Which Quark dtype a weight has is read from the config: the first
``layer_quant_config`` pattern (fnmatch) matching the layer name, else
``global_quant_config`` or one of ``layer_type_quant_config`` (the one that
fits the stored tensors).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from typing import Any

import ml_dtypes
import numpy as np

from ..errors import QuantFormatError
from ..quant.act import ActQuant
from .base import RawTensor

log = logging.getLogger(__name__)

MX_GROUP = 32
# Quark weight dtype -> (our MX qtype, bits per element)
MX_TYPES: dict[str, tuple[str, int]] = {
    "fp4": ("MXFP4_E2M1", 4),
    "fp6_e2m3": ("MXFP6_E2M3", 6),
    "fp6_e3m2": ("MXFP6_E3M2", 6),
    "fp8_e4m3": ("MXFP8_E4M3", 8),
    "fp8_e5m2": ("MXFP8_E5M2", 8),
}
# safetensors dtype of a Quark FP8 weight -> element dtype
FP8_STORAGE: dict[str, np.dtype] = {
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
}
FLOAT_STORAGE = ("F32", "F16", "BF16", "F64")
DROPPED_SUFFIXES = (".input_scale", ".output_scale", ".input_zero_point", ".output_zero_point")
SUPPORTED = ("MX fp4 / fp6_e2m3 / fp6_e3m2 / fp8_e4m3 / fp8_e5m2 weights (per_group 32, e8m0 scales), "
             "fp8_e4m3 / fp8_e5m2 weights with float scales (per_tensor, per_channel, per_group)")


def convert_quark_tensors(config: dict[str, Any], tensors: dict[str, RawTensor]) -> dict[str, RawTensor]:
    """Quark's raw safetensors tensors -> one RawTensor per weight, in our qtypes (see module doc)."""
    qconf = config.get("quantization_config")
    if not isinstance(qconf, dict) or qconf.get("quant_method") != "quark":
        raise QuantFormatError("config.json: expected quantization_config.quant_method 'quark', "
                               f"found {qconf.get('quant_method') if isinstance(qconf, dict) else qconf!r}")
    out_qtype = _model_float_type(config)
    consumed: set[str] = set()
    out: dict[str, RawTensor] = {}
    for name, t in tensors.items():
        if not name.endswith(".weight") or name + "_scale" not in tensors:
            continue
        scale = tensors[name + "_scale"]
        consumed.update({name + "_scale", name + "_zero_point"})
        layer = name[: -len(".weight")]
        if t.qtype in FLOAT_STORAGE:                 # fake_quantized (QDQ) export: already floats
            out[name] = t
            t.quark_weight = f"{t.qtype} (fake-quantised)"
        else:
            spec = _weight_spec(qconf, layer, t, scale)
            out[name] = _convert(name, t, scale, spec, out_qtype)
            out[name].quark_weight = (MX_TYPES[spec["dtype"]][0] if _is_mx(spec)
                                      else f"{spec.get('dtype')} {spec.get('qscheme')} (as {out[name].qtype})")
        act = input_quant(qconf, layer, tensors)
        if act is not None:
            out[name].act = act
        consumed.add(layer + ".input_scale")
    dropped = []
    for name, t in tensors.items():
        if name in out or name in consumed:
            continue
        if name.endswith(DROPPED_SUFFIXES):
            dropped.append(name)
            continue
        out[name] = t
    kv = {n for n in dropped if n.endswith(".output_scale") and _kv_layer(n) is not None}
    other = [n for n in dropped if n not in kv]
    if other:
        raise QuantFormatError(f"Quark export: {len(other)} quantisation parameter(s) rocmforge does not apply "
                               f"(e.g. {other[0]}); expected input_scale of quantised linear layers and the "
                               "KV cache's k_proj/v_proj output_scale only")
    return out


# ---- activations and the KV cache ------------------------------------------------------

KV_PATTERN = re.compile(r"\.layers\.(\d+)\.(?:self_attn|attention|attn)\.([kv])_proj\.output_scale$")


def _kv_layer(name: str) -> tuple[int, str] | None:
    m = KV_PATTERN.search(name)
    return (int(m.group(1)), m.group(2)) if m else None


def layer_config(qconf: dict, layer: str) -> dict | None:
    """The QLayerConfig dict Quark used for module ``layer`` (layer_quant_config > layer_type_quant_config
    > global; kv_cache_quant_config overrides; excluded layers keep only a KV output spec)."""
    entry = None
    for pattern, e in (qconf.get("layer_quant_config") or {}).items():
        if fnmatch.fnmatch(layer, pattern):
            entry = e
            break
    else:
        types = list((qconf.get("layer_type_quant_config") or {}).values())
        entry = types[0] if len(types) == 1 else qconf.get("global_quant_config")
    for pattern, e in (qconf.get("kv_cache_quant_config") or {}).items():
        if fnmatch.fnmatch(layer, pattern):
            entry = e
    if any(fnmatch.fnmatch(layer, p) for p in qconf.get("exclude") or []):
        out = (entry or {}).get("output_tensors") if entry else None
        return {"output_tensors": out} if out else None
    return entry


def input_quant(qconf: dict, layer: str, tensors: dict[str, RawTensor]) -> ActQuant | None:
    """The activation scheme of linear layer ``layer``'s input, from its config (None: float input)."""
    entry = layer_config(qconf, layer)
    spec = entry.get("input_tensors") if isinstance(entry, dict) else None
    if spec is None:
        return None
    where = f"Quark layer {layer!r}: input_tensors {_describe(spec)} is_dynamic={spec.get('is_dynamic')}"
    if isinstance(spec, list):
        raise QuantFormatError(f"Quark layer {layer!r}: multi-stage activation quantisation is not supported")
    dtype = spec.get("dtype")
    if _is_mx(spec):
        if not spec.get("is_dynamic"):
            raise QuantFormatError(f"{where}: static MX activations are not supported (expected is_dynamic)")
        rule = spec.get("scale_calculation_mode") or "even"
        return ActQuant("mx" + dtype if dtype != "fp4" else "mxfp4", scale_rule=rule)
    if dtype in ("fp8_e4m3", "fp8_e5m2") and spec.get("qscheme") == "per_tensor":
        if spec.get("is_dynamic"):
            return ActQuant(dtype)
        scale = tensors.get(layer + ".input_scale")
        if scale is None:
            raise QuantFormatError(f"{where}: static, but the export has no {layer}.input_scale")
        return ActQuant(dtype, float(np.asarray(scale.dequantize()).reshape(-1)[0]))
    raise QuantFormatError(f"{where}: not supported; rocmforge quantises activations as MX (dynamic, per 32, "
                           "e8m0) or FP8 per tensor (static or dynamic)")


def quark_kv_scales(config: dict, tensors: dict[str, RawTensor]) -> dict[int, tuple[float, float]]:
    """{layer: (k_scale, v_scale)} of an FP8 KV cache (k_proj/v_proj output_scale), {} without one."""
    qconf = config.get("quantization_config") or {}
    found: dict[int, dict[str, float]] = {}
    for name, t in tensors.items():
        hit = _kv_layer(name)
        if hit is None:
            continue
        spec = (layer_config(qconf, name[: -len(".output_scale")]) or {}).get("output_tensors") or {}
        if spec.get("dtype") != "fp8_e4m3" or spec.get("qscheme") != "per_tensor" or spec.get("is_dynamic"):
            raise QuantFormatError(f"Quark KV cache {name}: output_tensors {_describe(spec)} is not supported; "
                                   "rocmforge's FP8 KV cache reads static fp8_e4m3 per_tensor scales")
        found.setdefault(hit[0], {})[hit[1]] = float(np.asarray(t.dequantize()).reshape(-1)[0])
    half = [i for i, kv in found.items() if len(kv) != 2]
    if half:
        raise QuantFormatError(f"Quark KV cache: layer {half[0]} has a scale for only one of K and V")
    return {i: (kv["k"], kv["v"]) for i, kv in sorted(found.items())}


def quark_extras(config: dict, raw: dict[str, RawTensor], converted: dict[str, RawTensor]) -> dict[str, Any]:
    """What the loader keeps beside the tensors: ``kv_scales`` {layer: (k, v)}, ``quark_layers``
    (per-layer formats) and ``kv_cache_post_rope`` (where Quark calibrated K: before or after rope)."""
    qconf = config.get("quantization_config") or {}
    return {"kv_scales": quark_kv_scales(config, raw), "quark_layers": layer_formats(converted),
            "kv_cache_post_rope": bool(qconf.get("kv_cache_post_rope", False))}


def layer_formats(tensors: dict[str, RawTensor]) -> dict[str, dict[str, str]]:
    """{module: {"weight": format, "input": scheme}} of every quantised linear layer of converted
    ``tensors`` (for ``rocmforge info``)."""
    out = {}
    for name, t in tensors.items():
        fmt, act = getattr(t, "quark_weight", None), getattr(t, "act", None)
        if name.endswith(".weight") and (fmt or act):
            out[name[: -len(".weight")]] = {"weight": fmt or t.qtype, "input": act.describe() if act else "float"}
    return out


# ---- which spec applies ---------------------------------------------------------------

def _specs(entry: Any) -> list[dict]:
    """The weight spec(s) of a QLayerConfig dict; a list means sequential (multi-stage) quantisation."""
    w = entry.get("weight") if isinstance(entry, dict) else None
    if w is None:
        return []
    if isinstance(w, list):
        if len(w) == 1:
            return [w[0]]
        return [{"dtype": "+".join(str(s.get("dtype")) for s in w), "multi_stage": True}]
    return [w]


def _weight_spec(qconf: dict, layer: str, weight: RawTensor, scale: RawTensor) -> dict:
    candidates: list[dict] = []
    for pattern, entry in (qconf.get("layer_quant_config") or {}).items():
        if fnmatch.fnmatch(layer, pattern):
            candidates = _specs(entry)
            break
    else:
        candidates = _specs(qconf.get("global_quant_config"))
        for entry in (qconf.get("layer_type_quant_config") or {}).values():
            candidates += _specs(entry)
    fitting = [s for s in candidates if _fits(s, weight, scale)]
    distinct = {repr(sorted((k, str(v)) for k, v in s.items())): s for s in fitting}
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    where = f"Quark weight {weight.name!r} ({weight.qtype} {list(weight.shape)}, scale {scale.qtype} {list(scale.shape)})"
    if not distinct:
        found = ", ".join(_describe(s) for s in candidates) or "no weight quantisation spec"
        raise QuantFormatError(f"{where}: config gives {found}, which does not match the stored tensors or is "
                               f"not supported; rocmforge reads {SUPPORTED}")
    raise QuantFormatError(f"{where}: several quantisation specs fit ({', '.join(map(_describe, fitting))}); "
                           "expected layer_quant_config to name this layer")


def _describe(spec: dict) -> str:
    return f"{spec.get('dtype')} {spec.get('qscheme')} group_size={spec.get('group_size')} " \
           f"scale_format={spec.get('scale_format')}"


def _is_mx(spec: dict) -> bool:
    return (spec.get("dtype") in MX_TYPES and spec.get("qscheme") == "per_group"
            and spec.get("group_size") == MX_GROUP and spec.get("scale_format") == "e8m0"
            and spec.get("ch_axis", -1) in (-1, None))


def _fits(spec: dict, weight: RawTensor, scale: RawTensor) -> bool:
    if spec.get("multi_stage"):
        return False
    if _is_mx(spec):
        _, bits = MX_TYPES[spec["dtype"]]
        if weight.qtype not in ("U8", "I8", "F8_E4M3", "F8_E5M2") or scale.qtype not in ("U8", "F8_E8M0"):
            return False
        if len(weight.shape) == 0 or len(scale.shape) != len(weight.shape):
            return False
        n_in = weight.shape[-1] * 8 // bits
        return (tuple(scale.shape[:-1]) == tuple(weight.shape[:-1])
                and scale.shape[-1] * MX_GROUP == n_in and weight.shape[-1] * 8 % bits == 0)
    if spec.get("dtype") in ("fp8_e4m3", "fp8_e5m2"):
        return weight.qtype in FP8_STORAGE and scale.qtype in FLOAT_STORAGE
    return False


# ---- conversions ------------------------------------------------------------------------

def _convert(name: str, weight: RawTensor, scale: RawTensor, spec: dict, out_qtype: str) -> RawTensor:
    if _is_mx(spec):
        qtype, bits = MX_TYPES[spec["dtype"]]
        rows = int(np.prod(weight.shape[:-1], dtype=np.int64))
        n_blocks = scale.shape[-1]
        codes = np.ascontiguousarray(weight.data).reshape(-1).view(np.uint8).reshape(rows, n_blocks, MX_GROUP * bits // 8)
        scales = np.ascontiguousarray(scale.data).reshape(-1).view(np.uint8).reshape(rows, n_blocks, 1)
        raw = np.concatenate([scales, codes], axis=-1).reshape(-1)
        shape = (*weight.shape[:-1], n_blocks * MX_GROUP)
        return RawTensor(name, qtype, shape, raw)
    return _dequantize_fp8(name, weight, scale, spec, out_qtype)


def _dequantize_fp8(name: str, weight: RawTensor, scale: RawTensor, spec: dict, out_qtype: str) -> RawTensor:
    from ..quant import dequantize

    w = np.ascontiguousarray(weight.data).reshape(-1).view(np.uint8).view(FP8_STORAGE[weight.qtype])
    w = w.astype(np.float32).reshape(weight.shape)
    s = dequantize(scale.data, scale.qtype, scale.shape, name=scale.name)
    if s.size == 1:                                          # per_tensor
        s = s.reshape(())
    elif s.ndim == 1 and s.shape[0] == w.shape[0] and len(w.shape) >= 1 and spec.get("ch_axis", 0) in (0, None):
        s = s.reshape((-1,) + (1,) * (w.ndim - 1))           # per_channel, output axis
    elif s.ndim == 1 and w.ndim >= 1 and s.shape[0] == w.shape[-1]:
        s = s.reshape(-1)                                    # per_channel along the input axis
    elif s.ndim == w.ndim and s.shape[:-1] == w.shape[:-1] and s.shape[-1] and w.shape[-1] % s.shape[-1] == 0:
        s = np.repeat(s, w.shape[-1] // s.shape[-1], axis=-1)  # per_group along the last axis
    else:
        raise QuantFormatError(f"Quark weight {name!r} {list(weight.shape)}: scale of shape {list(scale.shape)} "
                               "fits none of per_tensor (), per_channel (out,), per_group (out, in/group)")
    values = w * s
    if out_qtype == "BF16":
        data = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    elif out_qtype == "F16":
        data = values.astype(np.float16)
    else:
        data = values
    return RawTensor(name, out_qtype, tuple(weight.shape), data)


def _model_float_type(config: dict) -> str:
    dtype = config.get("torch_dtype") or config.get("dtype")
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(str(dtype), "F32")
