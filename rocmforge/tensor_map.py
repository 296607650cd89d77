"""File tensor names -> canonical (GGUF-style) names, plus HF-side transforms.

Canonical names are GGUF names without the ``.weight`` suffix
(``blk.3.attn_q``; biases keep ``.bias``). A GGUF maps by identity; the HF
side goes through the map's ``hf`` patterns. Every tensor in the file must be
mapped or explicitly ignored, and every non-optional map entry must be found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import TensorMapError
from .loaders.base import RawTensor
from .schema import TensorMap


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def gguf_canonical(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


@dataclass
class MappedTensor:
    raw: RawTensor
    transform: str | None = None


# -------- HF -> GGUF layout transforms (take the float array and hparams)

def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores rotary halves (neox order); GGUF llama uses interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TRANSFORMS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "llama_rope_permute_q": lambda w, hp: _rope_permute(w, hp["n_head"]),
    "llama_rope_permute_k": lambda w, hp: _rope_permute(w, hp["n_head_kv"]),
    # Gemma's HF norms hold (w - 1); GGUF stores w.
    "add_one": lambda w, hp: w + 1.0,
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
                patterns.append((_pattern(hf), key, entry.hf_transform))
        ignore = [_pattern(p) for p in tmap.ignore_hf]
        for name, raw in tensors.items():
            for pat, key, transform in patterns:
                m = pat.match(name)
                if m:
                    canon = key.replace("{i}", m.group("i")) if "i" in m.groupdict() else key
                    if canon in out:
                        raise TensorMapError(f"{where}: tensors '{name}' and another both map to '{canon}'")
                    out[canon] = MappedTensor(raw, transform)
                    break
            else:
                if not any(p.match(name) for p in ignore):
                    unmapped.append(name)
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
    """The tensor in canonical layout (HF transforms applied; quantised data untouched)."""
    if t.transform is None:
        return t.raw
    fn = TRANSFORMS.get(t.transform)
    if fn is None:
        raise TensorMapError(f"unknown hf_transform '{t.transform}' for tensor '{t.raw.name}'; "
                             f"known: {', '.join(TRANSFORMS)}")
    arr = np.ascontiguousarray(fn(t.raw.dequantize(), hparams), dtype=np.float32)
    return RawTensor(t.raw.name, "F32", arr.shape, arr)
