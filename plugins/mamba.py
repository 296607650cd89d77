"""State-space models: Mamba (selective scan) and Mamba-2 (SSD), a recurrent state per sequence."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch

ARCHS = {
    "mamba": "Mamba (selective state spaces, S6)",
    "mamba2": "Mamba-2 (state space duality, SSD)",
}


@hookimpl
def register_architectures(register):
    for name, description in ARCHS.items():
        register(builtin_arch(name, description=description))
