"""Swiss AI Apertus: QK-norm, NeoX rope with llama3 scaling, xIELU MLP with per-layer parameters."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("apertus", description="Swiss AI Apertus (xIELU, QK-norm)"))
