"""Baidu ERNIE 4.5 (dense): interleaved rotary pairs, optional biases on every projection."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("ernie4_5", description="Baidu ERNIE 4.5 (dense)"))
