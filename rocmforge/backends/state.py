"""A sequence's recurrent state: fixed-size arrays per recurrent layer, beside its KV cache.

A recipe's ``state:`` section names each layer's state and its shape (Mamba: the convolution's
last ``d_conv - 1`` inputs and the SSM state ``h``); the executor allocates one
:class:`RecurrentState` per sequence through :meth:`Backend.new_state` and hangs it on the
sequence's KV cache as ``cache.state``. Its size does not depend on the context length. The
arrays are the backend's own (NumPy or CuPy), float32, zero at the start of a sequence; ops
update them in place. ``copy`` forks a sequence, ``reset`` starts it over; dropping the
session frees them with the KV cache.
"""

from __future__ import annotations

from typing import Any

from ..errors import RocmforgeError


class RecurrentState:
    """{(layer, name): array} of one sequence."""

    def __init__(self, arrays: dict[tuple[int, str], Any]):
        self.arrays = arrays

    def get(self, layer: int, name: str) -> Any:
        try:
            return self.arrays[(layer, name)]
        except KeyError:
            have = sorted({n for (lay, n) in self.arrays if lay == layer})
            raise RocmforgeError(f"layer {layer} has no recurrent state '{name}' (the recipe's state: section "
                                 f"gives it {have or 'none'})") from None

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.arrays})

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def reset(self) -> None:
        """Back to the state of an empty sequence (all zeros)."""
        for a in self.arrays.values():
            a.fill(0)

    def copy(self) -> RecurrentState:
        """An independent copy (a forked sequence)."""
        return RecurrentState({k: a.copy() for k, a in self.arrays.items()})

    def copy_from(self, other: RecurrentState) -> None:
        """Overwrite this state with ``other``'s (same layout)."""
        if set(other.arrays) != set(self.arrays):
            raise RocmforgeError("recurrent states of different layouts cannot be copied into each other")
        for k, a in self.arrays.items():
            a[...] = other.arrays[k]
