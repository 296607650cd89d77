"""IBM Granite MoE: Granite's multipliers, softmax over the top-k router logits, fused JetMoE experts."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("granitemoe", description="IBM Granite 3.x MoE"))
