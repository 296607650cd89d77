"""Qwen family: Qwen2/2.5 (QKV bias), Qwen3 (QK-norm), their mixture-of-experts variants, and the
Gated DeltaNet hybrids Qwen3-Next and Qwen3.5."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("qwen2", description="Qwen2, Qwen2.5"))
    register(builtin_arch("qwen3", description="Qwen3"))
    register(builtin_arch("qwen2moe", description="Qwen1.5-MoE, Qwen2-MoE (shared expert)"))
    register(builtin_arch("qwen3moe", description="Qwen3-MoE"))
    register(builtin_arch("qwen3_next", description="Qwen3-Next (Gated DeltaNet + gated attention hybrid, MoE)"))
    register(builtin_arch("qwen3_5", description="Qwen3.5 (Gated DeltaNet + gated attention hybrid)"))
    register(builtin_arch("qwen3_5_moe", description="Qwen3.5-MoE (Gated DeltaNet + gated attention hybrid, MoE)"))
