"""ByteDance Seed-OSS: NeoX rope, separate q/k/v, output and MLP bias switches."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("seed_oss", description="ByteDance Seed-OSS"))
