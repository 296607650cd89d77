"""AllenAI OLMoE: QK-norm over all heads, softmax top-k experts without renormalisation."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("olmoe", description="AllenAI OLMoE"))
