"""OpenAI gpt-oss: attention sinks, alternating sliding window, YaRN, biased MoE with a clamped SwiGLU, MXFP4 experts."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("gpt_oss", description="OpenAI gpt-oss (MoE, attention sinks)"))
