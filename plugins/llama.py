"""LLaMA family: LLaMA 1-3, Mistral, and Mixtral (the same recipe with experts)."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("llama", description="LLaMA 1/2/3, Mistral, Mixtral MoE"))
