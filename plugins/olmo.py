"""AllenAI OLMo 2 and OLMo 3: post-norms, all-heads QK-norm, OLMo 3's sliding-window layers."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    # OLMo 3 shares the recipe: llama.cpp writes its GGUFs under the olmo2 arch id.
    register(builtin_arch("olmo2", description="AllenAI OLMo 2 and OLMo 3"))
