"""``rocmforge list-archs``: every registered architecture and where it came from."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("list-archs", help="list the registered architectures",
                       description="List every architecture the installed plugins register: its GGUF arch ids, "
                                   "Hugging Face class names, providing plugin and YAML files. "
                                   "ROCMFORGE_PLUGINS=a,b limits which installed plugins load ('' = built-ins only).")
    p.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import list_architectures

    archs = list_architectures()
    if args.json:
        print(json.dumps(archs, indent=2))
        return 0
    rows = [("NAME", "GGUF ARCH", "HF CLASSES", "PLUGIN", "FILES")]
    for a in archs:
        rows.append((a["name"], ",".join(a["gguf_archs"]) or "-", ",".join(a["hf_classes"]) or "-",
                     f"{a['distribution']} {a['version']}",
                     f"{_short(a['recipe'])} {_short(a['tensor_map'])}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    return 0


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])
