"""Qwen family: Qwen2/2.5 (QKV bias), Qwen3 (QK-norm) and their mixture-of-experts variants."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("qwen2", description="Qwen2, Qwen2.5"))
    register(builtin_arch("qwen3", description="Qwen3"))
    register(builtin_arch("qwen2moe", description="Qwen1.5-MoE, Qwen2-MoE (shared expert)"))
    register(builtin_arch("qwen3moe", description="Qwen3-MoE"))
