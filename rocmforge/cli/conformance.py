"""``rocmforge conformance ARCH``: the per-plugin conformance suite."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("conformance", help="prove an architecture plugin on tiny random models",
                       description="Build the tiny random models an architecture's recipe declares (HF form by "
                                   "transformers, GGUF form F32/Q8_0/Q4_0) and check detection, tensor-map coverage, "
                                   "HF == GGUF, prefill/decode consistency, determinism, batching, quantised "
                                   "variants, GPU == CPU and logits against transformers. Exit code 1 on any failure.")
    p.add_argument("arch", nargs="?", help="architecture name (see list-archs); omit with --all")
    p.add_argument("--all", action="store_true", help="run every registered architecture")
    p.add_argument("--check", action="append", help="run only this check (repeatable)")
    p.add_argument("--workdir", help="keep the tiny models here instead of a temporary folder")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..registry import architectures
    from ..testing.conformance import CHECKS, as_dicts, run_conformance

    if args.check:
        unknown = set(args.check) - set(CHECKS)
        if unknown:
            print(f"rocmforge: unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
    archs = sorted(architectures()) if args.all else [args.arch] if args.arch else []
    if not archs:
        print("rocmforge: name an architecture (rocmforge list-archs) or pass --all", file=sys.stderr)
        return 2

    def show(r):
        if not args.json:
            mark = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}[r.status]
            print(f"{mark}  {r.arch:10s} {r.model:16s} {r.check:15s} {r.detail}", flush=True)

    results = []
    for arch in archs:
        results += run_conformance(arch, args.workdir, args.check, show)
    if args.json:
        print(json.dumps(as_dicts(results), indent=2))
    n_fail = sum(r.status == "fail" for r in results)
    if not args.json:
        n_pass = sum(r.status == "pass" for r in results)
        print(f"{n_pass} passed, {n_fail} failed, {sum(r.status == 'skip' for r in results)} skipped")
    return 1 if n_fail else 0
