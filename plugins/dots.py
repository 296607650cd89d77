"""rednote dots.llm1 (Dots1ForCausalLM): DeepSeek-V3-style routed experts under Qwen3-style attention."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("dots1", description="rednote dots.llm1 (MoE)"))
