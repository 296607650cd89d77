"""Zhipu GLM: GLM-4-0414 (post-norms) and ChatGLM / GlmForCausalLM; partial rotary, fused gate|up."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("glm4", description="Zhipu GLM-4-0414 / GLM-Z1"))
    register(builtin_arch("chatglm", description="THUDM ChatGLM, GLM-4-9B (GlmForCausalLM)"))
