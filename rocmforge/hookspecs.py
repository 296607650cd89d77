"""The hooks a rocmforge plugin may implement.

A plugin is a module (or object) with functions decorated by ``hookimpl``,
exposed through the ``rocmforge`` entry-point group. Built-in architectures
use exactly the same hooks (see ``rocmforge/plugins``).
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("rocmforge")
hookimpl = HookimplMarker("rocmforge")


@hookspec
def register_architectures(register):
    """Called once when the registry is first used.

    Call ``register(ArchSpec(...))`` for every architecture the plugin
    provides; an ArchSpec points at the plugin's recipe and tensor-map YAML."""


@hookspec
def register_ops(register):
    """Called once when the recipe executor is first built.

    Call ``register(name, fn)`` for each extra recipe op. ``fn(ctx, step)``
    receives the execution context and the recipe step (a dict) and stores
    its result with ``ctx.set(step["out"], value)``."""


@hookspec
def register_commands(cli):
    """Called while the ``rocmforge`` CLI is being built.

    ``cli`` is the argparse sub-parsers object: add a parser and set its
    ``func`` default to a callable taking the parsed ``args`` and returning
    an exit code."""
