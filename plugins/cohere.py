"""Cohere Command-R and Command-R7B: parallel attention + SwiGLU from one LayerNorm, logit scale;
Cohere 2 adds sliding-window layers with rope and full-attention layers without (NoPE)."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("cohere", description="Cohere Command-R, Aya (dense)"))
    register(builtin_arch("cohere2", description="Cohere 2 (Command R7B, Command A)"))
