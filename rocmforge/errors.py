"""The exceptions rocmforge raises. Every one carries a message a user can act on:
what went wrong, where (file, key, tensor), and what was expected."""


class RocmforgeError(Exception):
    """Base class: catch this to handle any rocmforge failure."""


class PluginError(RocmforgeError):
    """A plugin could not be loaded or registered something inconsistent."""


class SchemaError(RocmforgeError):
    """A recipe or tensor-map YAML file is malformed.

    The message names the file, the key path and what was expected."""

    def __init__(self, file: str, key: str, expected: str, found: object = None):
        self.file, self.key, self.expected = file, key, expected
        msg = f"{file}: at '{key}': expected {expected}"
        if found is not None:
            msg += f", found {found!r}"
        super().__init__(msg)


class UnknownArchitectureError(RocmforgeError):
    """No registered plugin claims the architecture found in a model's metadata."""


class ModelFormatError(RocmforgeError):
    """A model file is malformed, truncated, or lies about its contents."""


class TensorMapError(RocmforgeError):
    """Tensors in a file do not match the architecture's tensor map."""


class QuantFormatError(RocmforgeError):
    """Unknown quantisation type or raw bytes that do not fit the type's block layout."""


class DeviceError(RocmforgeError):
    """The requested compute device is not available."""
