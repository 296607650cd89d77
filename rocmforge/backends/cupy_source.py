"""Kernel sources: kernels/*.hip read from the installed package (or the source checkout) with their
``#include "rf_*.h"`` lines inlined, as hipRTC / NVRTC compile one self-contained text."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DeviceError


def kernel_source(name: str) -> str:
    """Text of kernels/<name> from the installed package (or the source checkout)."""
    try:
        from importlib.resources import files

        return files("rocmforge.kernels").joinpath(name).read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        path = Path(__file__).resolve().parents[2] / "kernels" / name
        if not path.is_file():
            raise DeviceError(f"kernel source {name} not found (looked in rocmforge.kernels and {path})") from None
        return path.read_text()


def _inline_includes(name: str, seen: set[str] | None = None) -> str:
    seen = set() if seen is None else seen
    out = []
    for line in kernel_source(name).splitlines():
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if m:
            inc = m.group(1)
            if inc not in seen:
                seen.add(inc)
                out.append(_inline_includes(inc, seen))
            continue
        if line.strip() == "#pragma once":
            continue
        out.append(line)
    return "\n".join(out)
