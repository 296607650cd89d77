"""Google Gemma 2 and Gemma 3 (text): scaled embeddings, (w - 1) norms, post-norms, soft-caps, local/global attention."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("gemma2", description="Google Gemma 2"))
    register(builtin_arch("gemma3", description="Google Gemma 3 (text)"))
