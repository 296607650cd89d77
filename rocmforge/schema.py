"""YAML -> validated recipe and tensor-map objects.

YAML is data: ``yaml.safe_load`` only (a ``!!python/object`` tag is an error),
and every problem raises :class:`SchemaError` naming the file, the key path
and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import expr
from .errors import SchemaError


def load_yaml(source: Any) -> tuple[dict, str]:
    """Read YAML from a path or importlib Traversable; returns (data, display name)."""
    name = str(source)
    try:
        text = source.read_text(encoding="utf-8") if hasattr(source, "read_text") else Path(source).read_text()
    except OSError as exc:
        raise SchemaError(name, "<file>", "a readable YAML file", str(exc)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise SchemaError(name, "<document>", "plain YAML data (tags such as !!python/object are refused)",
                          str(exc.problem)) from None
    except yaml.YAMLError as exc:
        raise SchemaError(name, "<document>", "valid YAML", str(exc).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise SchemaError(name, "<document>", "a mapping at the top level", type(data).__name__)
    return data, name


def _expect(cond: bool, file: str, key: str, expected: str, found: Any = None) -> None:
    if not cond:
        raise SchemaError(file, key, expected, found)


def _str_list(v: Any, file: str, key: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    _expect(isinstance(v, list) and all(isinstance(s, str) for s in v), file, key, "a string or a list of strings", v)
    return list(v)


def _only_keys(d: dict, allowed: set[str], file: str, key: str) -> None:
    extra = sorted(set(d) - allowed, key=str)
    if extra:
        where = f"{key}.{extra[0]}" if key else str(extra[0])   # "blocks", not ".blocks", at the top level
        raise SchemaError(file, where, f"one of {sorted(allowed)}", extra)


# ---------------------------------------------------------------- recipes

@dataclass
class HParam:
    name: str
    gguf: list[str]
    hf: list[str]
    default: Any = None
    has_default: bool = False
    type: str = "auto"
    from_tensor: tuple[str, int] | None = None
    # one value per layer (HF layer_types, GGUF per-layer arrays): a scalar is broadcast, a list
    # must have n_layer entries, and ``default`` is an expression evaluated for each ``layer``
    per_layer: bool = False
    # "list" / "scalar": take a file value only of that kind (GGUF's sliding_window_pattern is a
    # period or a per-layer array under one key); "any" by default
    accept: str = "any"
    # file value -> recipe value (HF layer_types strings -> booleans); a value outside it is refused
    map: dict | None = None


@dataclass
class Recipe:
    name: str
    file: str
    description: str
    gguf_archs: list[str]
    hf_classes: list[str]
    hparams: dict[str, HParam]
    embed: list[dict]
    block: list[dict]
    head: list[dict]
    chat_template: str | None = None
    tiny: list[dict] = field(default_factory=list)
    # the config audit (rocmforge.config_audit): honours / inert / refuses, gguf_inert / gguf_refuses
    config: dict = field(default_factory=dict)
    # KV cache rows per layer when they differ from the attention heads (absorbed MLA caches one
    # latent "head"): {n_head_kv, head_dim, head_dim_v} expressions over hparams + layer, and
    # ``if``: which layers hold K/V at all (hybrids: the attention layers; default every layer)
    cache: dict = field(default_factory=dict)
    # fixed-size recurrent state per layer (Mamba conv tail + SSM state, ...): {name: {shape: [expr, ...],
    # if?: condition over hparams + layer}}, allocated with each sequence next to its KV cache
    state: dict = field(default_factory=dict)


_HP_TYPES = {"auto", "int", "float", "bool", "str", "int_list", "float_list", "str_list", "bool_list"}
_STEP_SECTIONS = ("embed", "block", "head")


def parse_recipe(data: dict, file: str) -> Recipe:
    _only_keys(data, {"name", "description", "detect", "hparams", *_STEP_SECTIONS, "chat_template", "tiny",
                      "config", "cache", "state"}, file, "")
    _expect(isinstance(data.get("name"), str), file, "name", "the architecture name (a string)", data.get("name"))
    det = data.get("detect")
    _expect(isinstance(det, dict), file, "detect", "a mapping with 'gguf' and/or 'hf' lists", det)
    _only_keys(det, {"gguf", "hf"}, file, "detect")
    gguf_archs = _str_list(det.get("gguf", []), file, "detect.gguf")
    hf_classes = _str_list(det.get("hf", []), file, "detect.hf")
    _expect(bool(gguf_archs or hf_classes), file, "detect", "at least one GGUF arch id or HF class name")

    hps: dict[str, HParam] = {}
    raw_hp = data.get("hparams", {})
    _expect(isinstance(raw_hp, dict), file, "hparams", "a mapping of name -> {gguf, hf, default}", raw_hp)
    for name, spec in raw_hp.items():
        key = f"hparams.{name}"
        _expect(isinstance(spec, dict), file, key, "a mapping with gguf/hf/default/type/from_tensor", spec)
        _only_keys(spec, {"gguf", "hf", "default", "type", "from_tensor", "per_layer", "accept", "map"}, file, key)
        accept = spec.get("accept", "any")
        _expect(accept in ("any", "list", "scalar"), file, f"{key}.accept", "any, list or scalar", accept)
        vmap = spec.get("map")
        _expect(vmap is None or isinstance(vmap, dict), file, f"{key}.map", "a mapping file value -> value", vmap)
        typ = spec.get("type", "auto")
        _expect(typ in _HP_TYPES, file, f"{key}.type", f"one of {sorted(_HP_TYPES)}", typ)
        ft = spec.get("from_tensor")
        if ft is not None:
            _expect(isinstance(ft, dict) and isinstance(ft.get("name"), str) and isinstance(ft.get("axis"), int),
                    file, f"{key}.from_tensor", "{name: <canonical tensor>, axis: <int>}", ft)
            ft = (ft["name"], ft["axis"])
        default = spec.get("default")
        if isinstance(default, str):
            try:
                expr.parse(default)
            except expr.ExprError as exc:
                raise SchemaError(file, f"{key}.default", "a number or a recipe expression", str(exc)) from None
        per_layer = spec.get("per_layer", False)
        _expect(isinstance(per_layer, bool), file, f"{key}.per_layer", "true or false", per_layer)
        hps[name] = HParam(name, _str_list(spec.get("gguf", []), file, f"{key}.gguf"),
                           _str_list(spec.get("hf", []), file, f"{key}.hf"), default, "default" in spec, typ, ft,
                           per_layer, accept, vmap)

    sections = {}
    for sec in _STEP_SECTIONS:
        steps = data.get(sec, [])
        _expect(isinstance(steps, list), file, sec, "a list of steps", steps)
        for i, step in enumerate(steps):
            _validate_step(step, file, f"{sec}[{i}]")
        sections[sec] = steps
    _expect(bool(sections["block"]), file, "block", "a non-empty list of steps")
    tmpl = data.get("chat_template")
    _expect(tmpl is None or isinstance(tmpl, str), file, "chat_template", "a Jinja2 template string", tmpl)
    tiny = data.get("tiny", [])
    _expect(isinstance(tiny, list), file, "tiny", "a list of {name, hf_class, config} test models", tiny)
    for i, t in enumerate(tiny):
        _expect(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("hf_class"), str)
                and isinstance(t.get("config"), dict) and "model_type" in t["config"],
                file, f"tiny[{i}]", "{name: str, hf_class: <HF class>, config: {model_type: ..., ...}}", t)
    audit = data.get("config", {}) or {}
    _expect(isinstance(audit, dict), file, "config", "a mapping with honours/inert/refuses/gguf_inert/gguf_refuses",
            audit)
    _only_keys(audit, {"honours", "inert", "refuses", "gguf_inert", "gguf_refuses"}, file, "config")
    for key in ("honours", "inert", "gguf_inert"):
        audit[key] = _str_list(audit.get(key, []), file, f"config.{key}")
    for key in ("refuses", "gguf_refuses"):
        _expect(isinstance(audit.get(key, {}), dict), file, f"config.{key}",
                "a mapping key -> accepted value (or list of accepted values)", audit.get(key))
        audit.setdefault(key, {})
    cache = data.get("cache", {}) or {}
    _expect(isinstance(cache, dict) and set(cache) <= {"n_head_kv", "head_dim", "head_dim_v", "if"}, file, "cache",
            "a mapping with n_head_kv / head_dim / head_dim_v expressions and an optional if: condition", cache)
    for key, text in cache.items():
        try:
            expr.parse(str(text))
        except expr.ExprError as exc:
            raise SchemaError(file, f"cache.{key}", "a recipe expression over hparams and layer", str(exc)) from None
    state = _parse_state(data.get("state", {}) or {}, file)
    return Recipe(data["name"], file, str(data.get("description", "")), gguf_archs, hf_classes, hps,
                  sections["embed"], sections["block"], sections["head"], tmpl, tiny, audit, cache, state)


def _parse_state(state: Any, file: str) -> dict:
    """``state: {name: {shape: [expr, ...], if?: condition}}``: each layer's fixed-size recurrent state."""
    _expect(isinstance(state, dict), file, "state", "a mapping name -> {shape: [expr, ...], if: condition}", state)
    for name, spec in state.items():
        key = f"state.{name}"
        _expect(isinstance(spec, dict) and isinstance(spec.get("shape"), list) and spec["shape"], file, key,
                "{shape: [expr, ...], if?: condition}", spec)
        _only_keys(spec, {"shape", "if"}, file, key)
        for i, dim in enumerate(spec["shape"]):
            _expect(isinstance(dim, (int, str)) and not isinstance(dim, bool), file, f"{key}.shape[{i}]",
                    "an integer or a recipe expression", dim)
            if isinstance(dim, str):
                try:
                    expr.parse(dim)
                except expr.ExprError as exc:
                    raise SchemaError(file, f"{key}.shape[{i}]", "a recipe expression", str(exc)) from None
        if "if" in spec:
            try:
                expr.parse(str(spec["if"]))
            except expr.ExprError as exc:
                raise SchemaError(file, f"{key}.if", "a condition in the recipe grammar", str(exc)) from None
    return state


def _validate_step(step: Any, file: str, key: str) -> None:
    _expect(isinstance(step, dict), file, key, "a step mapping such as {op: rms_norm, in: x, out: h}", step)
    _expect(isinstance(step.get("op"), str), file, f"{key}.op", "the op name (a string)", step.get("op"))
    if "if" in step:
        try:
            expr.parse(str(step["if"]))
        except expr.ExprError as exc:
            raise SchemaError(file, f"{key}.if", "a condition in the recipe grammar", str(exc)) from None
    if "out" in step:
        _expect(isinstance(step["out"], str), file, f"{key}.out", "an activation name", step["out"])
    if "in" in step:
        v = step["in"]
        _expect(isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
                file, f"{key}.in", "an activation name or a list of them", v)


# ---------------------------------------------------------------- tensor maps

@dataclass
class TensorEntry:
    canonical: str          # GGUF-style name without ".weight", may hold {i}
    hf: list[str]
    hf_transform: str | None = None
    optional: bool = False
    tied_to: str | None = None
    hf_fused: list[str] = field(default_factory=list)   # fused HF tensor(s) holding this one as a row block
    fused_part: tuple[int, int] | None = None          # (part, of) of hf_fused along axis -2
    hf_transforms: dict[str, str | None] = field(default_factory=dict)   # per-name hf_transform overrides


@dataclass
class TensorMap:
    file: str
    tensors: dict[str, TensorEntry]
    ignore_hf: list[str] = field(default_factory=list)
    ignore_gguf: list[str] = field(default_factory=list)


def parse_tensor_map(data: dict, file: str) -> TensorMap:
    _only_keys(data, {"tensors", "ignore"}, file, "")
    raw = data.get("tensors")
    _expect(isinstance(raw, dict) and raw, file, "tensors", "a non-empty mapping canonical-name -> {hf: ...}", raw)
    out: dict[str, TensorEntry] = {}
    for name, spec in raw.items():
        key = f"tensors.{name}"
        _expect(isinstance(name, str), file, key, "a canonical tensor name", name)
        if spec is None:
            spec = {}
        _expect(isinstance(spec, dict), file, key, "a mapping with hf/hf_transform/hf_fused/optional/tied_to", spec)
        _only_keys(spec, {"hf", "hf_transform", "hf_fused", "optional", "tied_to"}, file, key)
        # an hf item may be {name, transform}: that name's own layout transform (null: none), e.g. a
        # float checkpoint's fused tensor next to the canonical-layout tensor a loader converted
        hf_items = spec.get("hf", [])
        hf_items = [hf_items] if isinstance(hf_items, (str, dict)) else list(hf_items) if isinstance(hf_items, list) \
            else hf_items
        per_name: dict[str, str | None] = {}
        if isinstance(hf_items, list):
            for j, item in enumerate(hf_items):
                if isinstance(item, dict):
                    _expect(set(item) == {"name", "transform"} and isinstance(item["name"], str)
                            and (item["transform"] is None or isinstance(item["transform"], str)),
                            file, f"{key}.hf", "a string or a list of strings / {name: <HF name>, "
                            "transform: <transform name or null>} items", item)
                    per_name[item["name"]] = item["transform"]
                    hf_items[j] = item["name"]
        hf = _str_list(hf_items, file, f"{key}.hf")
        opt = spec.get("optional", False)
        _expect(isinstance(opt, bool), file, f"{key}.optional", "true or false", opt)
        tr = spec.get("hf_transform")
        _expect(tr is None or isinstance(tr, str), file, f"{key}.hf_transform", "a transform name", tr)
        tied = spec.get("tied_to")
        _expect(tied is None or tied in raw, file, f"{key}.tied_to", "another tensor of this map", tied)
        fused, part = [], None
        if "hf_fused" in spec:
            fz = spec["hf_fused"]
            _expect(isinstance(fz, dict) and set(fz) == {"name", "part", "of"} and isinstance(fz["part"], int)
                    and isinstance(fz["of"], int) and 0 <= fz["part"] < fz["of"], file, f"{key}.hf_fused",
                    "{name: <HF name(s)>, part: <row block index>, of: <number of equal row blocks>}", fz)
            fused, part = _str_list(fz["name"], file, f"{key}.hf_fused.name"), (fz["part"], fz["of"])
        out[name] = TensorEntry(name, hf, tr, opt, tied, fused, part, per_name)
    ign = data.get("ignore", {}) or {}
    _expect(isinstance(ign, dict), file, "ignore", "a mapping with 'hf' and/or 'gguf' lists", ign)
    _only_keys(ign, {"hf", "gguf"}, file, "ignore")
    return TensorMap(file, out, _str_list(ign.get("hf", []), file, "ignore.hf"),
                     _str_list(ign.get("gguf", []), file, "ignore.gguf"))
