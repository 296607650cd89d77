"""Liquid AI LFM2 and LFM2-MoE: gated short convolutions (a small recurrent state per sequence) interleaved
with attention; the MoE variant routes its later FFNs to sigmoid-scored experts."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch

ARCHS = {
    "lfm2": "Liquid AI LFM2 (short convolutions + attention)",
    "lfm2moe": "Liquid AI LFM2-MoE (short convolutions + attention, sigmoid-routed experts)",
}


@hookimpl
def register_architectures(register):
    for name, description in ARCHS.items():
        register(builtin_arch(name, description=description))
