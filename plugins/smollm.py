"""HuggingFace SmolLM3: the LLaMA block with NoPE layers (no rotary embedding on every 4th layer)."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("smollm3", description="HuggingFace SmolLM3"))
