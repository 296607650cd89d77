"""TII Falcon-H1: attention and a Mamba-2 mixer side by side in every layer, muP multipliers as recipe data."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("falcon_h1", description="TII Falcon-H1 (parallel attention + Mamba-2 per layer)"))
