"""Arcee AFM: the LLaMA block with a ReLU^2 up/down MLP and YaRN rope."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("arcee", description="Arcee AFM (ReLU^2 MLP)"))
