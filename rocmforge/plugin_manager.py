"""The pluggy plugin manager: entry points, the allowlist, and the built-ins.

Built-in architectures are plugins like any third-party one: they are
registered here through the same hooks (``rocmforge/plugins/*.py``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass

import pluggy

from . import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rocmforge"
ALLOWLIST_ENV = "ROCMFORGE_PLUGINS"

def builtin_plugins() -> list[str]:
    """Every module of rocmforge.plugins (the top-level plugins/ folder): one built-in plugin each."""
    import pkgutil

    from . import plugins

    return sorted(m.name for m in pkgutil.iter_modules(plugins.__path__) if not m.ispkg)


@dataclass(frozen=True)
class PluginSource:
    """Where a registration came from: the plugin's name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.plugin} ({self.distribution} {self.version})"


_manager: pluggy.PluginManager | None = None


def _allowed(names: set[str]) -> bool:
    """Entry points load only when ROCMFORGE_PLUGINS is unset or names them."""
    allow = os.environ.get(ALLOWLIST_ENV)
    if allow is None:
        return True
    wanted = {a.strip().lower().replace("_", "-") for a in allow.split(",") if a.strip()}
    return bool(wanted & {n.lower().replace("_", "-") for n in names})


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        if not _allowed({ep.name, dist}):
            log.debug("plugin %s from %s not in %s; skipped", ep.name, dist, ALLOWLIST_ENV)
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the host down
            log.warning("could not load rocmforge plugin %r from %s: %s", ep.name, dist, exc)
            continue
        pm.register(plugin, name=ep.name)
        _DIST_OF[ep.name] = (dist, ep.dist.version if ep.dist else "?")


_DIST_OF: dict[str, tuple[str, str]] = {}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, built on first use."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("rocmforge")
        pm.add_hookspecs(hookspecs)
        # Under pytest, what happens to be installed must not change the results.
        if not getattr(sys, "_called_from_test", False):
            _load_entry_points(pm)
        from . import __version__

        for name in builtin_plugins():
            mod = importlib.import_module(f"rocmforge.plugins.{name}")
            pm.register(mod, name=f"rocmforge.{name}")
            _DIST_OF[f"rocmforge.{name}"] = ("rocmforge", __version__)
        _manager = pm
    return _manager


def source_of(plugin_name: str) -> PluginSource:
    dist, version = _DIST_OF.get(plugin_name, ("?", "?"))
    return PluginSource(plugin_name, dist, version)


def register_plugin(plugin: object, name: str, distribution: str = "local", version: str = "0") -> None:
    """Register a plugin object by hand (tests, notebooks) and reset the registry."""
    get_plugin_manager().register(plugin, name=name)
    _DIST_OF[name] = (distribution, version)
    _invalidate()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _DIST_OF.pop(name, None)
    _invalidate()


def _invalidate() -> None:
    from . import registry

    registry.reset()
