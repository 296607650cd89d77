"""IBM Granite 3 (dense): the LLaMA block with embedding, attention, residual and logit multipliers."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("granite", description="IBM Granite 3 (dense)"))
