"""The classic decoder families: GPT-2, GPT-NeoX, Falcon, BLOOM, MPT, Phi-2, StarCoder2, StableLM, Gemma 1.

LayerNorm blocks with biases, learned or ALiBi positions, fused per-head QKV,
parallel attention + MLP residuals, partial rotary: all recipe options."""

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import builtin_arch

ARCHS = {
    "gpt2": "OpenAI GPT-2",
    "gptneox": "EleutherAI GPT-NeoX / Pythia",
    "falcon": "TII Falcon",
    "bloom": "BigScience BLOOM",
    "mpt": "MosaicML MPT",
    "phi2": "Microsoft Phi-2",
    "starcoder2": "BigCode StarCoder2",
    "stablelm": "Stability AI StableLM",
    "gemma": "Google Gemma",
}


@hookimpl
def register_architectures(register):
    for name, description in ARCHS.items():
        register(builtin_arch(name, description=description))
