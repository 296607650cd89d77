"""Google Gemma 4 (text): per-layer input embeddings, per-layer head sizes, K = V, KV sharing, proportional rope."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("gemma4", description="Google Gemma 4 (text)"))
