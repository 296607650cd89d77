"""Meta Llama 4 (text): chunked attention, NoPE layers with query temperature, QK L2-norm, input-weighted MoE."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("llama4", description="Meta Llama 4 (text)"))
