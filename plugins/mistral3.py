"""Mistral AI Ministral 3 (text): YaRN rope with Llama-4-style query temperature by position."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("ministral3", description="Mistral AI Ministral 3 (text)"))
