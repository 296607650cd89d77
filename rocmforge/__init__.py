"""rocmforge: a plugin-based, multi-architecture LLM model zoo and inference engine.

Importing rocmforge is cheap and never touches a GPU: plugins, loaders,
backends and CuPy are all imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .model import Model

__all__ = ["__version__", "load_model", "list_architectures", "quant", "RocmforgeError"]

from .errors import RocmforgeError  # light: no third-party imports


def _find_source_folders() -> None:
    # The wheel carries plugins/, architectures/, mappings/ and kernels/ inside this
    # package (pyproject's package-dir). In a source checkout run with PYTHONPATH=.
    # they sit beside it, so let the package path reach the checkout root too.
    import os

    here = os.path.dirname(__file__)
    root = os.path.dirname(here)
    if not os.path.isdir(os.path.join(here, "architectures")) and os.path.isfile(
        os.path.join(root, "architectures", "llama.yaml")
    ):
        __path__.append(root)  # noqa: F821 - __path__ is defined for packages


_find_source_folders()


def load_model(path: str, device: str = "cpu", **kwargs: Any) -> Model:
    """Load a GGUF file or a Hugging Face folder; the architecture is detected from metadata."""
    from .model import load_model as _load

    return _load(path, device=device, **kwargs)


def list_architectures() -> list[dict]:
    """Every registered architecture with its detection ids and the plugin that provides it."""
    from .registry import architectures

    out = []
    for spec in architectures().values():
        out.append({
            "name": spec.name,
            "description": spec.description,
            "gguf_archs": spec.gguf_archs,
            "hf_classes": spec.hf_classes,
            "plugin": spec.source.plugin if spec.source else None,
            "distribution": spec.source.distribution if spec.source else None,
            "version": spec.source.version if spec.source else None,
            "recipe": str(spec.recipe),
            "tensor_map": str(spec.tensor_map),
        })
    return sorted(out, key=lambda d: d["name"])


def __getattr__(name: str):
    if name == "quant":
        import importlib

        return importlib.import_module(".quant", __name__)
    raise AttributeError(f"module 'rocmforge' has no attribute {name!r}")
