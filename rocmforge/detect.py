"""Which ArchSpec handles a loaded file: from metadata only, never the file name."""

from __future__ import annotations

from . import registry
from .errors import ModelFormatError
from .loaders.base import LoadedFile
from .registry import ArchSpec


def detect(loaded: LoadedFile) -> ArchSpec:
    if loaded.format == "gguf":
        arch = loaded.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise ModelFormatError(f"{loaded.path}: GGUF has no 'general.architecture' key; cannot tell the architecture")
        return registry.by_gguf_arch(arch)
    classes = loaded.metadata.get("architectures")
    if not isinstance(classes, list) or not classes:
        raise ModelFormatError(f"{loaded.path}: config.json has no 'architectures' list; cannot tell the architecture")
    return registry.by_hf_class([str(c) for c in classes], loaded.metadata.get("model_type"))
