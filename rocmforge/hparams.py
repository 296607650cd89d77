"""Hyperparameters from metadata, as the recipe's ``hparams`` table says.

GGUF keys may hold ``{arch}`` (the file's general.architecture); HF keys are
config.json paths, dotted for nested dicts (``rope_scaling.factor``).
A missing value falls back to ``default`` (a number or a recipe expression
over other hparams) or is derived from a tensor's shape (``from_tensor``);
derived values are checked against the metadata when both exist.
"""

from __future__ import annotations

from typing import Any

from . import expr
from .errors import ModelFormatError
from .schema import HParam, Recipe

_MISSING = object()


def _lookup_hf(config: dict, path: str) -> Any:
    cur: Any = config
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            # HF nests text settings in text_config for multimodal checkpoints
            return _MISSING
        cur = cur[part]
    return cur


def _coerce(hp: HParam, value: Any, where: str) -> Any:
    try:
        if hp.type == "int":
            return int(value)
        if hp.type == "float":
            return float(value)
        if hp.type == "bool":
            return bool(value)
        if hp.type == "str":
            return str(value)
        if hp.type == "int_list":
            return [int(v) for v in (value if isinstance(value, list) else [value])]
        if hp.type == "float_list":
            return [float(v) for v in (value if isinstance(value, list) else [value])]
    except (TypeError, ValueError):
        raise ModelFormatError(f"{where}: hyperparameter '{hp.name}' should be {hp.type}, found {value!r}") from None
    return value


def resolve_hparams(recipe: Recipe, fmt: str, metadata: dict, shapes: dict[str, tuple[int, ...]],
                    where: str) -> dict[str, Any]:
    """Resolve every hparam of ``recipe``; ``shapes`` maps canonical tensor names to shapes."""
    arch = metadata.get("general.architecture", "")
    config = metadata
    if fmt == "hf" and isinstance(metadata.get("text_config"), dict):
        config = {**metadata, **metadata["text_config"]}
    out: dict[str, Any] = {}
    pending: dict[str, HParam] = {}
    for name, hp in recipe.hparams.items():
        value = _MISSING
        if fmt == "gguf":
            for key in hp.gguf:
                k = key.replace("{arch}", arch)
                if k in metadata:
                    value = metadata[k]
                    break
        else:
            for key in hp.hf:
                value = _lookup_hf(config, key)
                if value is not _MISSING:
                    break
        derived = _MISSING
        if hp.from_tensor is not None:
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
        if value is _MISSING:
            pending[name] = hp
        else:
            out[name] = _coerce(hp, value, where)
    # defaults may refer to other hparams: resolve until nothing changes
    while pending:
        progressed = False
        for name, hp in list(pending.items()):
            if not hp.has_default:
                keys = [k.replace("{arch}", arch) for k in hp.gguf] if fmt == "gguf" else hp.hf
                got = ", ".join(keys) or "(no key)"
                raise ModelFormatError(f"{where}: required hyperparameter '{name}' not found (looked for {got})")
            is_expr = isinstance(hp.default, str) and hp.type != "str"
            deps = expr.names(hp.default) if is_expr else set()
            if deps & set(pending):
                continue
            value = hp.default
            if is_expr:
                value = expr.evaluate(value, out)
            out[name] = _coerce(hp, value, where) if value is not None else None
            del pending[name]
            progressed = True
        if not progressed:
            raise ModelFormatError(f"{where}: hyperparameter defaults refer to each other: {sorted(pending)}")
    return out
