"""NVIDIA Nemotron (dense): LayerNorm1p, partial NeoX rotary, squared-ReLU MLP."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("nemotron", description="NVIDIA Nemotron / Minitron (dense)"))
