"""Pick the loader from what is on disk (GGUF magic, or a folder with config.json), never from names alone."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFormatError
from .base import LoadedFile

EXPECTED = "a .gguf file (starting with the magic b'GGUF') or a Hugging Face folder containing config.json"


def detect_format(path: str | os.PathLike[str]) -> str:
    """"gguf" or "hf"; ModelFormatError for anything else."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf"
        raise ModelFormatError(f"{p}: a folder without config.json; expected {EXPECTED}")
    if not p.exists():
        raise ModelFormatError(f"{p}: no such file or folder; expected {EXPECTED}")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFormatError(f"{p}: cannot read ({e.strerror or e}); expected {EXPECTED}") from None
    if magic == b"GGUF":
        return "gguf"
    hint = ""
    if p.name == "config.json" or p.suffix == ".safetensors":
        hint = f" (pass the folder {p.parent} instead)"
    raise ModelFormatError(f"{p}: starts with {magic!r}{hint}; expected {EXPECTED}")


def open_model_file(path: str | os.PathLike[str]) -> LoadedFile:
    """Load a model from a GGUF file or a Hugging Face folder."""
    fmt = detect_format(path)
    if fmt == "gguf":
        from .gguf import read_gguf
        return read_gguf(path)
    from .hf import read_hf_folder
    return read_hf_folder(path)
