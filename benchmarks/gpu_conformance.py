"""The conformance suite's GPU == CPU check for every registered architecture, over prebuilt tiny models.

The GPU machine may lack transformers, so the tiny models are built beforehand where it is
installed, then carried:

    python benchmarks/gpu_conformance.py --build .gpu-models            # here: HF + GGUF F32/Q4_0 forms
    python benchmarks/gpu_conformance.py --workdir .gpu-models --json out.json   # on the GPU machine

Each result is the conformance 'gpu' check (logits GPU vs CPU, NMSE <= 5e-4, F32 and Q4_0 files).
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", metavar="DIR", help="build every tiny model's HF, F32 and Q4_0 forms into DIR")
    ap.add_argument("--workdir", metavar="DIR", help="run the GPU check over the models built in DIR")
    ap.add_argument("--arch", action="append", help="only these architectures (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = ap.parse_args()

    from rocmforge.registry import get
    from rocmforge.testing.conformance import _Tiny, collect, run_check

    cases = [c for c in collect() if not args.arch or c[0] in args.arch]
    if args.build:
        for arch, name in cases:
            tiny = next(t for t in get(arch).recipe_obj.tiny if t["name"] == name)
            t = _Tiny(arch, tiny, Path(args.build) / arch)
            t.gguf("F32"), t.gguf("Q4_0")
            import shutil

            shutil.rmtree(t.hf_dir())    # the GPU check reads the GGUF forms only (keeps the carry small)
            print(f"built {arch}/{name}", flush=True)
        return 0
    results, failed = [], 0
    for arch, name in cases:
        t0 = time.perf_counter()
        r = run_check(arch, name, "gpu", Path(args.workdir) / arch)
        failed += r.status == "fail"
        results.append({"arch": arch, "model": name, "status": r.status, "detail": r.detail,
                        "seconds": round(time.perf_counter() - t0, 2)})
        print(f"{r.status:4s} {arch}/{name}: {r.detail}", flush=True)
    print(f"{len(results) - failed} of {len(results)} passed or skipped, {failed} failed")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
