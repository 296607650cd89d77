"""Paged KV: one pool of fixed-size blocks per layer shared by every sequence, and a per-sequence
view (block table + written length) that the attention ops take as the sequence's cache.

Position p of a sequence lives in pool block ``table[p // block_size]``, row ``p % block_size``.
Which blocks a sequence holds is the engine's business (rocmforge.engine.kv_cache_manager); the
backend only reads and writes through the table. This file holds the backend-neutral view and the
NumPy store; the GPU store is rocmforge/backends/cupy_paged.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import RocmforgeError


class PagedKVView:
    """One sequence's cache in a paged store: what a Segment carries instead of a contiguous cache."""

    paged = True

    def __init__(self, store, table: Sequence[int] = (), max_tokens: int | None = None):
        self.pool = store
        self.table = np.asarray(table, np.int32)
        self.length = [0] * store.n_layer          # positions written, per layer
        self.max_tokens = max_tokens                # None: as far as the table reaches
        self.dev_table = None                      # backend copy of the table (GPU), refreshed on change

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    def set_table(self, table: Sequence[int], length: int) -> None:
        """The engine's block table for this step; every layer holds the first ``length`` positions."""
        table = np.asarray(table, np.int32)
        if not np.array_equal(table, self.table):
            self.table = table
            self.dev_table = None
        self.length = [length] * len(self.length)

    def check(self, layer: int, end: int) -> None:
        if end > len(self.table) * self.block_size:
            raise RocmforgeError(f"paged KV: position {end - 1} lies past the {len(self.table)} blocks of the "
                                 f"sequence's block table (block_size {self.block_size})")
        if self.max_tokens is not None and end > self.max_tokens:
            raise RocmforgeError(f"sequence of {end} tokens exceeds the context of {self.max_tokens}")

    def slots(self, pos0: int, n: int) -> np.ndarray:
        """Flat pool rows (block * block_size + row) of positions pos0..pos0+n."""
        p = np.arange(pos0, pos0 + n)
        return self.table[p // self.block_size].astype(np.int64) * self.block_size + p % self.block_size

    # the NumPy backend's cache interface (NumpyKVCache has the same two methods)
    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        end = pos0 + k.shape[0]
        self.check(layer, end)
        kp, vp = self.pool.layer(layer, k.shape[1:], v.shape[1:])
        rows = self.slots(pos0, k.shape[0])
        k, v = self.pool.encode(layer, k, v)
        kp.reshape(-1, *kp.shape[2:])[rows] = k
        vp.reshape(-1, *vp.shape[2:])[rows] = v
        self.length[layer] = end

    def read(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V of positions 0..n, gathered through the table: (n, n_kv_head, head_dim)."""
        kp, vp = self.pool.k[layer], self.pool.v[layer]
        nb = -(-n // self.block_size)
        blocks = self.table[:nb]
        keys = kp[blocks].reshape(nb * self.block_size, *kp.shape[2:])[:n]
        vals = vp[blocks].reshape(nb * self.block_size, *vp.shape[2:])[:n]
        return self.pool.decode(layer, keys, vals)


def layer_shapes(n_layer: int, n_kv_head: int, dk: int, dv: int, layers: dict | None) -> list[tuple[int, int, int]]:
    """(n_kv_head, dk, dv) of every layer's pools: the model default, or with ``layers`` exactly those
    layers' shapes and zero heads (no memory) for the layers that hold no K/V."""
    if layers is None:
        return [(n_kv_head, dk, dv)] * n_layer
    return [tuple(layers[i]) if i in layers else (0, dk, dv) for i in range(n_layer)]


class NumpyPagedKV:
    """K and V pools of every layer, (num_blocks, block_size, n_kv_head, head_dim): float32, or FP8
    codes of ``flavour`` (fp8_e4m3fn / fp8_e4m3fnuz, ml_dtypes arrays) with one scale per layer and
    tensor from rocmforge.quant.act.kv_pool_scales (the file's ``scales``, else a fixed 1.0: the pool
    is shared, so no scale may depend on which request stored first). value = code * scale.

    ``layers`` {layer: (n_kv_head, dk, dv)} (a recipe that declares its cache per layer: a hybrid's
    attention layers) gives those layers pools of exactly that shape and the others none (zero
    heads). Without it, a layer whose K/V differ from the model default gets pools of its own shape
    at its first store, while nothing has been written to it yet."""

    def __init__(self, n_layer: int, n_kv_head: int, dk: int, dv: int, num_blocks: int, block_size: int,
                 flavour: str | None = None, scales: dict | None = None, layers: dict | None = None):
        from ..quant.act import kv_flavour, kv_pool_scales

        self.n_layer, self.num_blocks, self.block_size = n_layer, num_blocks, block_size
        self.flavour = flavour
        self.dtype = np.dtype(kv_flavour(flavour)[0] if flavour else np.float32)
        self.k_scale, self.v_scale = kv_pool_scales(flavour, n_layer, scales) if flavour else (None, None)
        shapes = layer_shapes(n_layer, n_kv_head, dk, dv, layers)
        self.k = [np.zeros((num_blocks, block_size, h, a), self.dtype) for h, a, _ in shapes]
        self.v = [np.zeros((num_blocks, block_size, h, b), self.dtype) for h, _, b in shapes]
        self._written = [False] * n_layer

    def layer(self, layer: int, k_shape: tuple, v_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        if not self._written[layer]:
            if self.k[layer].shape[2:] != tuple(k_shape) or self.v[layer].shape[2:] != tuple(v_shape):
                self.k[layer] = np.zeros((self.num_blocks, self.block_size, *k_shape), self.dtype)
                self.v[layer] = np.zeros((self.num_blocks, self.block_size, *v_shape), self.dtype)
            self._written[layer] = True
        return self.k[layer], self.v[layer]

    def encode(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K/V rows as the pool stores them (FP8: codes of x / scale, rocmforge.quant.act.kv_encode)."""
        if not self.flavour:
            return k, v
        from ..quant.act import kv_encode

        return (kv_encode(k, self.k_scale[layer], self.flavour),
                kv_encode(v, self.v_scale[layer], self.flavour))

    def decode(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored K/V rows as float32."""
        if not self.flavour:
            return k, v
        from ..quant.act import kv_decode

        return kv_decode(k, self.k_scale[layer]), kv_decode(v, self.v_scale[layer])

    @property
    def nbytes(self) -> int:
        """Bytes the K and V pools take."""
        return int(sum(a.nbytes for a in (*self.k, *self.v)))

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: block dst becomes a copy of block src in every layer."""
        if not pairs:
            return
        src = np.array([s for s, _ in pairs])
        dst = np.array([d for _, d in pairs])
        for layer in range(self.n_layer):
            self.k[layer][dst] = self.k[layer][src]
            self.v[layer][dst] = self.v[layer][src]

    def view(self, table: Sequence[int] = (), max_tokens: int | None = None) -> PagedKVView:
        return PagedKVView(self, table, max_tokens)
