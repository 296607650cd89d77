"""File tensor names -> canonical (GGUF-style) names, plus HF-side transforms.

Canonical names are GGUF names without the ``.weight`` suffix
(``blk.3.attn_q``; biases keep ``.bias``). A GGUF maps by identity; the HF
side goes through the map's ``hf`` patterns. Every tensor in the file must be
mapped or explicitly ignored, and every non-optional map entry must be found.

HF patterns hold ``{i}`` (the layer) and may hold ``{j}``: the tensors matching
a ``{j}`` pattern are stacked along a new axis 0 in ``j`` order (per-expert
checkpoints -> one 3-D ``ffn_*_exps`` tensor; j must run 0..n-1). An entry's
``hf_fused: {name, part, of}`` takes row block ``part`` of ``of`` equal blocks
(axis -2) of a fused HF tensor, so one HF tensor (transformers' MoE
``gate_up_proj``) feeds several canonical tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import TensorMapError
from .loaders.base import RawTensor
from .schema import TensorMap


def _pattern(template: str) -> re.Pattern:
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + body + "$")


def gguf_canonical(name: str) -> str:
    return name.removesuffix(".weight")


@dataclass
class MappedTensor:
    """A canonical tensor: ``raw`` has its canonical shape and storage type.

    Usually ``raw`` is the file's tensor itself. When the canonical tensor is a
    stack of file tensors (``parts``) or a transform changes the shape, ``raw``
    is a placeholder without data (name, qtype, shape) and :func:`materialize`
    builds the array from ``parts`` (or ``source``)."""

    raw: RawTensor
    transform: str | None = None
    parts: list[RawTensor] | None = None
    source: RawTensor | None = None
    split: tuple[int, int] | None = None      # (part, of): row block of a fused tensor


def file_names(t: MappedTensor) -> set[str]:
    """The names of the file tensors a canonical tensor is made from."""
    if t.parts is not None:
        return {p.name for p in t.parts}
    return {(t.source or t.raw).name}


def _mapped(raw: RawTensor, transform: str | None, parts: list[RawTensor] | None = None,
            split: tuple[int, int] | None = None, where: str = "") -> MappedTensor:
    reshaped = transform in SHAPE_CHANGES
    if parts is None and split is None and not reshaped:
        return MappedTensor(raw, transform)
    shape = raw.shape if parts is None else (len(parts), *raw.shape)
    if split is not None:
        of = split[1]
        if len(shape) < 2 or shape[-2] % of:
            raise TensorMapError(f"{where}: '{raw.name}' of shape {shape} cannot be split into {of} row blocks")
        shape = (*shape[:-2], shape[-2] // of, shape[-1])
    if reshaped:
        shape = SHAPE_CHANGES[transform](tuple(shape))
    placeholder = RawTensor(raw.name, raw.qtype, tuple(int(n) for n in shape), np.empty(0, np.uint8))
    return MappedTensor(placeholder, transform, parts, raw, split)


# -------- HF -> GGUF layout transforms (take the float array and hparams)

def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores rotary halves (neox order); GGUF llama uses interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _qkv_per_group(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    # HF fused rows per KV group: its q heads, then its k head, then its v head (GPT-NeoX, BLOOM:
    # one q head per group; Falcon's new decoder: n_head / n_head_kv); GGUF: all q | all k | all v.
    g = n_head // n_head_kv
    x = w.reshape(n_head_kv, g + 2, -1, *w.shape[1:])
    return np.concatenate([x[:, :g].reshape(-1, *w.shape[1:]), x[:, g].reshape(-1, *w.shape[1:]),
                           x[:, g + 1].reshape(-1, *w.shape[1:])])


# transforms that change a tensor's shape: canonical shape from the file's (applied after a split)
SHAPE_CHANGES: dict[str, Callable[[tuple], tuple]] = {
    "transpose": lambda shape: (*shape[:-2], shape[-1], shape[-2]) if len(shape) >= 2 else shape,
    "even_cols": lambda shape: (*shape[:-1], shape[-1] // 2),
    "odd_cols": lambda shape: (*shape[:-1], shape[-1] // 2),
    "even_cols_t": lambda shape: (*shape[:-2], shape[-1] // 2, shape[-2]),
    "odd_cols_t": lambda shape: (*shape[:-2], shape[-1] // 2, shape[-2]),
    "vector": lambda shape: (int(np.prod(shape)),),
    "first_half_cols_t": lambda shape: (*shape[:-2], shape[-1] // 2, shape[-2]),
    "second_half_cols_t": lambda shape: (*shape[:-2], shape[-1] // 2, shape[-2]),
    "squeeze": lambda shape: tuple(s for s in shape if s != 1) or (1,),
}

TRANSFORMS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "llama_rope_permute_q": lambda w, hp: _rope_permute(w, hp["n_head"]),
    "llama_rope_permute_k": lambda w, hp: _rope_permute(w, hp["n_head_kv"]),
    # Gemma's HF norms hold (w - 1); GGUF stores w.
    "add_one": lambda w, hp: w + 1.0,
    "qkv_per_head": lambda w, hp: _qkv_per_group(w, hp["n_head"], hp["n_head_kv"]),
    # GPT-2's Conv1D keeps weights as (in, out); GGUF and our linear use (out, in).
    "transpose": lambda w, hp: np.ascontiguousarray(np.swapaxes(w, -1, -2)),
    # gpt-oss keeps gate and up interleaved along the last axis of an (in, 2*ff) matrix (and its bias)
    "even_cols": lambda w, hp: np.ascontiguousarray(w[..., 0::2]),
    "odd_cols": lambda w, hp: np.ascontiguousarray(w[..., 1::2]),
    "even_cols_t": lambda w, hp: np.ascontiguousarray(np.swapaxes(w[..., 0::2], -1, -2)),
    "odd_cols_t": lambda w, hp: np.ascontiguousarray(np.swapaxes(w[..., 1::2], -1, -2)),
    # a 0-d scalar tensor (Apertus' xIELU beta / eps) as a 1-element vector: GGUF tensors have 1-4 dims
    "vector": lambda w, hp: w.reshape(-1),
    # Llama 4 keeps experts as (E, in, out), gate columns then up columns: halves, transposed
    "first_half_cols_t": lambda w, hp: np.ascontiguousarray(np.swapaxes(w[..., : w.shape[-1] // 2], -1, -2)),
    "second_half_cols_t": lambda w, hp: np.ascontiguousarray(np.swapaxes(w[..., w.shape[-1] // 2:], -1, -2)),
    # Mamba's depthwise conv weight: HF Conv1d (channels, 1, d_conv), GGUF (channels, d_conv)
    "squeeze": lambda w, hp: np.ascontiguousarray(w.reshape(SHAPE_CHANGES["squeeze"](w.shape))),
    # Mamba's A is stored as A_log in HF; GGUF (llama.cpp's converter) stores A = -exp(A_log)
    "neg_exp": lambda w, hp: -np.exp(w),
}


def map_tensors(tmap: TensorMap, fmt: str, tensors: dict[str, RawTensor], where: str) -> dict[str, MappedTensor]:
    """Canonical name -> MappedTensor for every tensor; errors list every problem name."""
    out: dict[str, MappedTensor] = {}
    unmapped: list[str] = []
    if fmt == "gguf":
        patterns = [(_pattern(k), k) for k in tmap.tensors]
        ignore = [_pattern(p) for p in tmap.ignore_gguf]
        for name, raw in tensors.items():
            canon = gguf_canonical(name)
            if any(p.match(canon) or p.match(name) for p in ignore):
                continue
            if any(p.match(canon) for p, _ in patterns):
                out[canon] = MappedTensor(raw)
            else:
                unmapped.append(name)
    else:
        patterns = []
        for key, entry in tmap.tensors.items():
            for hf in entry.hf:
                patterns.append((_pattern(hf), key, entry.hf_transforms.get(hf, entry.hf_transform), None))
            for hf in entry.hf_fused:
                patterns.append((_pattern(hf), key, entry.hf_transform, entry.fused_part))
        ignore = [_pattern(p) for p in tmap.ignore_hf]
        stacks: dict[str, tuple[dict[int, RawTensor], str | None, tuple[int, int] | None]] = {}
        for name, raw in tensors.items():
            keys_hit: set[str] = set()
            for pat, key, transform, split in patterns:
                m = None if key in keys_hit else pat.match(name)
                if not m:
                    continue
                keys_hit.add(key)
                groups = m.groupdict()
                canon = key.replace("{i}", groups["i"]) if "i" in groups else key
                if "j" in groups:
                    parts = stacks.setdefault(canon, ({}, transform, split))[0]
                    if int(groups["j"]) in parts:
                        raise TensorMapError(f"{where}: tensors '{name}' and another are both part "
                                             f"{groups['j']} of '{canon}'")
                    parts[int(groups["j"])] = raw
                    continue
                if canon in out:
                    raise TensorMapError(f"{where}: tensors '{name}' and another both map to '{canon}'")
                out[canon] = _mapped(raw, transform, None, split, where)
            if not keys_hit and not any(p.match(name) for p in ignore):
                unmapped.append(name)
        for canon, (parts, transform, split) in stacks.items():
            if canon in out:
                raise TensorMapError(f"{where}: '{canon}' is in the file both whole and in parts")
            if sorted(parts) != list(range(len(parts))):
                missing = sorted(set(range(max(parts) + 1)) - set(parts))
                raise TensorMapError(f"{where}: '{canon}' is stacked from parts 0..{max(parts)} but part(s) "
                                     f"{missing} are missing")
            shapes = {parts[j].shape for j in parts}
            if len(shapes) > 1:
                raise TensorMapError(f"{where}: the parts of '{canon}' differ in shape: {sorted(shapes)}")
            ordered = [parts[j] for j in range(len(parts))]
            out[canon] = _mapped(ordered[0], transform, ordered, split, where)
    if unmapped:
        raise TensorMapError(f"{where}: {len(unmapped)} tensor(s) not in the tensor map ({tmap.file}) and not "
                             f"ignored: {', '.join(sorted(unmapped)[:20])}" + (" ..." if len(unmapped) > 20 else ""))
    return out


def check_complete(tmap: TensorMap, mapped: dict[str, MappedTensor], n_layer: int, where: str) -> None:
    """Every non-optional entry present (per layer for {i} entries); apply tied_to."""
    missing = []
    for key, entry in tmap.tensors.items():
        names = [key.replace("{i}", str(i)) for i in range(n_layer)] if "{i}" in key else [key]
        for name in names:
            if name in mapped:
                continue
            if entry.tied_to:
                tied = entry.tied_to.replace("{i}", name.split(".")[1]) if "{i}" in entry.tied_to else entry.tied_to
                if tied in mapped:
                    mapped[name] = mapped[tied]
                    continue
            if not entry.optional:
                missing.append(name)
    if missing:
        raise TensorMapError(f"{where}: {len(missing)} required tensor(s) missing: "
                             f"{', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    extra_layers = [n for n in mapped if n.startswith("blk.") and int(n.split(".")[1]) >= n_layer]
    if extra_layers:
        raise TensorMapError(f"{where}: tensors for layers beyond n_layer={n_layer}: {', '.join(extra_layers[:10])}")


def materialize(t: MappedTensor, hparams: dict) -> RawTensor:
    """The tensor in canonical layout (parts stacked, row block taken, HF transform applied).

    A tensor the file holds as is comes back untouched (quantised data stays quantised)."""
    if t.transform is None and t.parts is None and t.split is None:
        return t.raw
    fn = None
    if t.transform is not None:
        fn = TRANSFORMS.get(t.transform)
        if fn is None:
            raise TensorMapError(f"unknown hf_transform '{t.transform}' for tensor '{t.raw.name}'; "
                                 f"known: {', '.join(TRANSFORMS)}")
    if t.parts is not None:
        arr = np.stack([p.dequantize() for p in t.parts])
    else:
        arr = (t.source or t.raw).dequantize()
    if t.split is not None:
        part, of = t.split
        rows = arr.shape[-2] // of
        arr = arr[..., part * rows: (part + 1) * rows, :]
    if fn is not None:
        arr = fn(arr, hparams)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape != t.raw.shape:
        raise TensorMapError(f"tensor '{t.raw.name}': built shape {arr.shape}, expected {t.raw.shape}")
    return RawTensor(t.raw.name, "F32", arr.shape, arr)
