"""IBM Granite MoE: Granite's multipliers, softmax over the top-k router logits, fused JetMoE experts;
Granite 4.0-H adds Mamba-2 layers and a shared expert (granitemoehybrid)."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("granitemoe", description="IBM Granite 3.x MoE"))
    register(builtin_arch("granitemoehybrid",
                          description="IBM Granite 4.0-H (Mamba-2 / attention hybrid, MoE + shared expert)"))
