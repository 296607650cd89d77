"""AI21 Jamba: attention and Mamba (S6) layers interleaved, MoE feed-forwards on some of them."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("jamba", description="AI21 Jamba (attention + Mamba hybrid, MoE)"))
