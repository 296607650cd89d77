"""Hyperparameters from metadata, as the recipe's ``hparams`` table says.

GGUF keys may hold ``{arch}`` (the file's general.architecture); HF keys are
config.json paths, dotted for nested dicts (``rope_scaling.factor``).
A missing value falls back to ``default`` (a number or a recipe expression
over other hparams) or is derived from a tensor's shape (``from_tensor``);
derived values are checked against the metadata when both exist.

Per-layer hparams (``per_layer: true``) are lists of n_layer values: the
file's own list (HF ``layer_types``, a GGUF array) is read first; a scalar is
broadcast; a ``from_tensor`` name with ``{i}`` then gives each layer the size of its own
tensor (0 where the layer has none: which layers hold experts, say); only without
any of these is ``default`` evaluated once per ``layer``, which is how a recipe
derives a pattern for files that carry none. A scalar
hparam that a GGUF stores as a per-layer array (llama.cpp writes
``head_count_kv`` that way for some archs) is accepted when all entries agree.
"""

from __future__ import annotations

from typing import Any

from . import expr
from .errors import ModelFormatError
from .schema import HParam, Recipe

_MISSING = object()


def _accepts(hp: HParam, value: Any) -> bool:
    is_list = isinstance(value, (list, tuple))
    return hp.accept == "any" or (hp.accept == "list") == is_list


def _mapped(hp: HParam, value: Any, where: str) -> Any:
    """Translate file values through the hparam's ``map`` (lists element by element)."""
    if hp.map is None:
        return value

    def one(v):
        if v not in hp.map:
            raise ModelFormatError(f"{where}: hyperparameter '{hp.name}' has value {v!r}; this architecture "
                                   f"supports {', '.join(repr(k) for k in hp.map)}")
        return hp.map[v]

    return [one(v) for v in value] if isinstance(value, (list, tuple)) else one(value)


def _lookup_hf(config: dict, path: str) -> Any:
    cur: Any = config
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            # HF nests text settings in text_config for multimodal checkpoints
            return _MISSING
        cur = cur[part]
    return cur


def _float(v: Any) -> float:
    """float(v); transformers 5 writes non-finite floats into config.json as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"])
    return float(v)


_LIST_ITEM = {"int_list": int, "float_list": _float, "str_list": str, "bool_list": bool}


def _coerce(hp: HParam, value: Any, where: str, n_layer: int | None = None) -> Any:
    if hp.per_layer:
        return _coerce_per_layer(hp, value, where, n_layer)
    if isinstance(value, (list, tuple)) and hp.type not in _LIST_ITEM:
        # a GGUF per-layer array for a value this recipe keeps per model
        if len(value) == 0 or any(v != value[0] for v in value):
            raise ModelFormatError(f"{where}: hyperparameter '{hp.name}' differs between layers ({list(value)[:8]}"
                                   f"{' ...' if len(value) > 8 else ''}); this architecture's recipe needs one value")
        value = value[0]
    try:
        if hp.type == "int":
            return int(value)
        if hp.type == "float":
            return _float(value)
        if hp.type == "bool":
            return bool(value)
        if hp.type == "str":
            return str(value)
        if hp.type == "int_list":
            return [int(v) for v in (value if isinstance(value, list) else [value])]
        if hp.type in _LIST_ITEM:
            item = _LIST_ITEM[hp.type]
            return [item(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        raise ModelFormatError(f"{where}: hyperparameter '{hp.name}' should be {hp.type}, found {value!r}") from None
    return value


def _coerce_per_layer(hp: HParam, value: Any, where: str, n_layer: int | None) -> list:
    if n_layer is None:
        raise ModelFormatError(f"{where}: per-layer hyperparameter '{hp.name}' needs n_layer")
    if not isinstance(value, (list, tuple)):
        value = [value] * n_layer
    if len(value) != n_layer:
        raise ModelFormatError(f"{where}: hyperparameter '{hp.name}' has {len(value)} per-layer values for "
                               f"{n_layer} layers")
    item = _LIST_ITEM.get(hp.type)
    if item is None:
        return list(value)
    try:
        return [item(v) for v in value]
    except (TypeError, ValueError):
        raise ModelFormatError(f"{where}: hyperparameter '{hp.name}' should be a list of "
                               f"{item.__name__}, found {list(value)!r}") from None


def _per_layer_sizes(from_tensor: tuple[str, int], shapes: dict[str, tuple[int, ...]], n_layer: int) -> list[int]:
    """Each layer's size of tensor ``name`` (``{i}`` = the layer) along ``axis``; 0 where it has none."""
    name, axis = from_tensor
    sizes = []
    for i in range(n_layer):
        shape = shapes.get(name.replace("{i}", str(i)))
        sizes.append(shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else 0)
    return sizes


def resolve_hparams(recipe: Recipe, fmt: str, metadata: dict, shapes: dict[str, tuple[int, ...]],
                    where: str) -> dict[str, Any]:
    """Resolve every hparam of ``recipe``; ``shapes`` maps canonical tensor names to shapes."""
    arch = metadata.get("general.architecture", "")
    config = metadata
    if fmt == "hf" and isinstance(metadata.get("text_config"), dict):
        config = {**metadata, **metadata["text_config"]}
    out: dict[str, Any] = {}
    pending: dict[str, HParam] = {}
    found: dict[str, Any] = {}       # file values of per-layer hparams, coerced once n_layer is known
    for name, hp in recipe.hparams.items():
        value = _MISSING
        if fmt == "gguf":
            for key in hp.gguf:
                k = key.replace("{arch}", arch)
                if k in metadata and _accepts(hp, metadata[k]):
                    value = metadata[k]
                    break
        else:
            for key in hp.hf:
                value = _lookup_hf(config, key)
                if value is not _MISSING and _accepts(hp, value):
                    break
                value = _MISSING
        if value is not _MISSING:
            value = _mapped(hp, value, where)
        derived = _MISSING
        if hp.from_tensor is not None and "{i}" in hp.from_tensor[0]:
            pass        # one tensor per layer: sized once n_layer is known (below)
        elif hp.from_tensor is not None:
            tname, axis = hp.from_tensor
            if tname not in shapes:
                tname = f"blk.0.{tname}"   # a per-layer tensor: layer 0 speaks for all
            if tname in shapes and -len(shapes[tname]) <= axis < len(shapes[tname]):
                derived = shapes[tname][axis]
        if value is _MISSING:
            value = derived
        elif derived is not _MISSING and isinstance(value, (int, float)) and int(value) != derived:
            raise ModelFormatError(f"{where}: metadata says {name}={value} but tensor '{tname}' "
                                   f"has {derived} along axis {hp.from_tensor[1]}")
        if value is _MISSING or hp.per_layer:
            pending[name] = hp       # per-layer lists wait for n_layer
            if value is not _MISSING:
                found[name] = value
        else:
            out[name] = _coerce(hp, value, where)
    # defaults may refer to other hparams: resolve until nothing changes
    while pending:
        progressed = False
        for name, hp in list(pending.items()):
            if hp.per_layer:
                if "n_layer" not in out:
                    continue
                if name not in found and hp.from_tensor is not None and "{i}" in hp.from_tensor[0] and shapes:
                    found[name] = _per_layer_sizes(hp.from_tensor, shapes, out["n_layer"])
                if name in found:
                    out[name] = _coerce(hp, found[name], where, out["n_layer"])
                    del pending[name]
                    progressed = True
                    continue
            if not hp.has_default:
                keys = [k.replace("{arch}", arch) for k in hp.gguf] if fmt == "gguf" else hp.hf
                got = ", ".join(keys) or "(no key)"
                raise ModelFormatError(f"{where}: required hyperparameter '{name}' not found (looked for {got})")
            is_expr = isinstance(hp.default, str) and hp.type != "str"
            deps = (expr.names(hp.default) - {"layer"}) if is_expr else set()
            if deps & set(pending):
                continue
            value = hp.default
            if is_expr and hp.per_layer:
                value = [expr.evaluate(value, {**out, "layer": i}) for i in range(out["n_layer"])]
            elif is_expr:
                value = expr.evaluate(value, out)
            if value is None:
                out[name] = None
            else:
                out[name] = _coerce(hp, value, where, out.get("n_layer"))
            del pending[name]
            progressed = True
        if not progressed:
            raise ModelFormatError(f"{where}: hyperparameter defaults refer to each other: {sorted(pending)}")
    return out
