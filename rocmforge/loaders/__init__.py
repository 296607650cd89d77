"""Loaders turn files into named raw tensors plus metadata; no math happens here."""

from __future__ import annotations


def open_model_file(path: str):
    """A GGUF file or a Hugging Face folder -> LoadedFile (see detect_format)."""
    from .detect_format import open_model_file as _open

    return _open(path)
