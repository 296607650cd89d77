"""DeepSeek family: V2 / V2-Lite / V3 / R1 (multi-head latent attention, grouped MoE routing)."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    # one recipe: llama.cpp writes V2 and V3 alike as GGUF arch "deepseek2"
    register(builtin_arch("deepseek2", description="DeepSeek-V2, V2-Lite, V3, R1 (MLA, grouped MoE routing)"))
