"""Tencent Hunyuan dense: QK-norm after rope, NTK-alpha rope base."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch


@hookimpl
def register_architectures(register):
    register(builtin_arch("hunyuan_v1_dense", description="Tencent Hunyuan dense (HunYuanDenseV1)"))
