"""The architecture registry: every ArchSpec that plugins registered.

Built lazily on first use (plugins are imported then, never at
``import rocmforge``). Two plugins claiming the same architecture name, GGUF
arch id or HF class is an error naming both, never silent shadowing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from .errors import PluginError, UnknownArchitectureError
from .schema import Recipe, TensorMap, load_yaml, parse_recipe, parse_tensor_map


@dataclass(eq=False)
class ArchSpec:
    """One architecture: a recipe YAML and a tensor-map YAML.

    ``recipe`` and ``tensor_map`` are paths or ``importlib.resources``
    Traversables. Detection ids (GGUF arch ids, HF class names) live in the
    recipe's ``detect`` section."""

    name: str
    recipe: Any
    tensor_map: Any
    description: str = ""
    source: Any = field(default=None, compare=False)  # PluginSource, set by the registry

    @cached_property
    def recipe_obj(self) -> Recipe:
        data, file = load_yaml(self.recipe)
        return parse_recipe(data, file)

    @cached_property
    def map_obj(self) -> TensorMap:
        data, file = load_yaml(self.tensor_map)
        return parse_tensor_map(data, file)

    @property
    def gguf_archs(self) -> list[str]:
        return self.recipe_obj.gguf_archs

    @property
    def hf_classes(self) -> list[str]:
        return self.recipe_obj.hf_classes


def builtin_yaml(kind: str, name: str):
    """The packaged YAML file ``architectures/<name>.yaml`` or ``mappings/<name>.yaml``."""
    return resources.files(f"rocmforge.{kind}").joinpath(f"{name}.yaml")


def builtin_arch(name: str, recipe: str | None = None, tensor_map: str | None = None, description: str = "") -> ArchSpec:
    return ArchSpec(name, builtin_yaml("architectures", recipe or name),
                    builtin_yaml("mappings", tensor_map or recipe or name), description)


_specs: dict[str, ArchSpec] | None = None


def reset() -> None:
    global _specs
    _specs = None


def _collect() -> dict[str, ArchSpec]:
    from .plugin_manager import get_plugin_manager, source_of

    pm = get_plugin_manager()
    specs: dict[str, ArchSpec] = {}
    claims: dict[tuple[str, str], ArchSpec] = {}
    for impl in reversed(pm.hook.register_architectures.get_hookimpls()):
        src = source_of(impl.plugin_name)

        def register(spec: ArchSpec, _src=src) -> None:
            if not isinstance(spec, ArchSpec):
                raise PluginError(f"plugin {_src} passed {type(spec).__name__} to register(); expected an ArchSpec")
            spec.source = _src
            if spec.name in specs:
                raise PluginError(f"architecture '{spec.name}' is registered by both {specs[spec.name].source} "
                                  f"and {_src}; uninstall one, or leave one out with ROCMFORGE_PLUGINS")
            for kind, ids in (("GGUF arch", spec.gguf_archs), ("HF class", spec.hf_classes)):
                for ident in ids:
                    other = claims.get((kind, ident))
                    if other is not None:
                        raise PluginError(f"{kind} '{ident}' is claimed by '{other.name}' from {other.source} "
                                          f"and by '{spec.name}' from {_src}")
                    claims[(kind, ident)] = spec
            specs[spec.name] = spec

        impl.function(register=register)
    return specs


def architectures() -> dict[str, ArchSpec]:
    """All registered architectures by name (built on first call)."""
    global _specs
    if _specs is None:
        _specs = _collect()
    return _specs


def get(name: str) -> ArchSpec:
    specs = architectures()
    if name not in specs:
        raise UnknownArchitectureError(f"unknown architecture '{name}'; registered: {', '.join(sorted(specs))}")
    return specs[name]


# Architectures shipped as their own distributions: the "no plugin handles" errors name them.
KNOWN_PLUGINS = {
    "phi3": "rocmforge-phi3", "Phi3ForCausalLM": "rocmforge-phi3",
}


def _install_hint(*ids: str) -> str:
    for ident in ids:
        if ident in KNOWN_PLUGINS:
            return f" Install its plugin: pip install {KNOWN_PLUGINS[ident]}"
    return " An architecture plugin may add it (rocmforge list-archs)."


def by_gguf_arch(arch_id: str) -> ArchSpec:
    for spec in architectures().values():
        if arch_id in spec.gguf_archs:
            return spec
    known = sorted(a for s in architectures().values() for a in s.gguf_archs)
    raise UnknownArchitectureError(f"no plugin handles GGUF architecture '{arch_id}'; known: {', '.join(known)}."
                                   + _install_hint(arch_id))


def by_hf_class(classes: list[str], model_type: str | None = None) -> ArchSpec:
    for cls in classes:
        for spec in architectures().values():
            if cls in spec.hf_classes:
                return spec
    known = sorted(c for s in architectures().values() for c in s.hf_classes)
    raise UnknownArchitectureError(f"no plugin handles HF architectures {classes} (model_type={model_type!r}); "
                                   f"known: {', '.join(known)}." + _install_hint(*classes))
