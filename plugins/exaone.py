"""LG EXAONE 4.0: post-norms, per-head QK-norm, sliding-window layers with rope and full layers without."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("exaone4", description="LG EXAONE 4.0"))
