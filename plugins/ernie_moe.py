"""Baidu ERNIE 4.5 MoE: interleaved dense/MoE layers, softmax routing with a selection bias, shared experts."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("ernie4_5_moe", description="Baidu ERNIE 4.5 MoE"))
