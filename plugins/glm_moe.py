"""GLM-4.5 family (Glm4MoeForCausalLM): DeepSeek-V3-style routed experts under GLM attention."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("glm4moe", description="GLM-4.5, GLM-4.5-Air, GLM-4.6 (MoE)"))
