"""Expert routers beyond the backend's own softmax / sigmoid top-k, one module per scheme.

A router is ``fn(ctx, step, logits) -> (weights (T, k) float32, ids (T, k) int64)`` on
the host, ``logits`` being the (T, n_expert) router output as a NumPy array.
Each module registers its routers with :func:`router`; the ``moe`` op looks a
step's ``gating`` up here first, then falls back to ``Backend.moe_route``.
Modules of this package are imported on first use, so adding one is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import numpy as np

Router = Callable[[object, dict, np.ndarray], tuple[np.ndarray, np.ndarray]]
_ROUTERS: dict[str, Router] = {}
_loaded = False


def router(name: str) -> Callable[[Router], Router]:
    def wrap(fn: Router) -> Router:
        if name in _ROUTERS:
            raise ValueError(f"router '{name}' is defined twice")
        _ROUTERS[name] = fn
        return fn

    return wrap


def routers() -> dict[str, Router]:
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True
    return _ROUTERS
