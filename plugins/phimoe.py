"""Microsoft Phi-3.5-MoE: LayerNorm with bias, biased attention and lm_head, SparseMixer top-2 routing."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("phimoe", description="Microsoft Phi-3.5-MoE"))
