"""rocmforge next to llama.cpp's CPU llama-bench on the same real GGUF files: pp128 and tg64, two threads.

    python benchmarks/side_by_side_cpu.py                        # smollm2 and gemma3-270m, 3 rounds
    python benchmarks/side_by_side_cpu.py --llama-bench /tmp/lb/bin/llama-bench --rounds 5 --json out.json

llama-bench is built once for the CPU (GGML_CUDA off, ``benchmarks/side_by_side.py``'s cmake
settings) from the llama.cpp that the llama-cpp-python 0.3.36 sdist vendors, into --build-dir
(default ~/.cache/rocmforge/llama-bench-cpu), unless --llama-bench names a binary. Each round runs
``llama-bench -m FILE -t 2 -p 128 -n 64 -r 3`` and then ``rocmforge bench FILE --prompt 128 --gen 64
--repeat 3 --device D`` for every --devices entry, one after the other (never side by side), so a
noisy neighbour hits all engines alike; the table gives the median over rounds, the spread, and
ours / llama.cpp. Peak resident memory (max RSS) of each rocmforge run is reported next to the
file size. ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are removed from the environment, as a
user's machine has them unset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = Path("/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp")
DEFAULT_BUILD = Path.home() / ".cache" / "rocmforge" / "llama-bench-cpu"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_llama_bench(src: Path, build: Path, jobs: int) -> Path:
    from side_by_side import bench_binary, start_build, wait_build

    binary = bench_binary(build)
    if binary.exists():
        return binary
    logfile = build / "build.log"
    build.mkdir(parents=True, exist_ok=True)
    return wait_build(start_build(src, build, "cpu", None, jobs, logfile), build, logfile, time.time())


def _env() -> dict:
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    return env


def run_llama(binary: Path, model: Path, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
           "-r", str(reps), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True).stdout
    res = {}
    for row in json.loads(out):
        key = "pp" if row["n_prompt"] else "tg"
        res[key] = float(row["avg_ts"])
    return res


def run_ours(model: Path, device: str, n_prompt: int, n_gen: int, reps: int) -> dict:
    cmd = [sys.executable, "-m", "rocmforge", "bench", str(model), "--prompt", str(n_prompt), "--gen", str(n_gen),
           "--repeat", str(reps), "--device", device, "--json"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, env=_env(), cwd=ROOT)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)      # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    res = json.loads(out)
    return {"pp": res["pp_tps"], "tg": res["tg_tps"], "backend": res["backend"], "wall_s": wall,
            "max_rss_mib": usage.ru_maxrss / 1024 if usage else None,
            "kv_mib": res.get("kv_cache_bytes", 0) / 2**20, "kernels": res.get("kernels")}


def _resolve(name: str) -> Path:
    from rocmforge.installed_models import resolve_model

    return Path(resolve_model(name))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3-270m", help="installed short names or GGUF paths")
    ap.add_argument("--devices", default="cpu-kernels,numpy", help="rocmforge --device values to run")
    ap.add_argument("--llama-bench", type=Path, help="a llama-bench binary (skips the build)")
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="llama.cpp source tree to build from")
    ap.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="repetitions inside each engine's own bench")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds; the table shows medians")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args(argv)

    binary = args.llama_bench or build_llama_bench(args.src, args.build_dir, args.jobs)
    devices = [d for d in args.devices.split(",") if d]
    runs: dict = {}
    for name in [m for m in args.models.split(",") if m]:
        path = _resolve(name)
        size = path.stat().st_size
        rec = runs[name] = {"file": str(path), "file_mib": size / 2**20, "llama": [], **{d: [] for d in devices}}
        for r in range(args.rounds):
            rec["llama"].append(run_llama(binary, path, args.threads, args.prompt, args.gen, args.repeat))
            log(f"[{name} round {r + 1}] llama.cpp {rec['llama'][-1]}")
            for d in devices:
                rec[d].append(run_ours(path, d, args.prompt, args.gen, args.repeat))
                log(f"[{name} round {r + 1}] rocmforge {d} {rec[d][-1]}")
    print_table(runs, devices, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2))
    return 0


def machine() -> str:
    """The CPU's model name and the vector extensions the kernels (and llama.cpp) care about."""
    flags, name = set(), "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "?":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    want = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "amx_int8"]
    return f"{name}, {os.cpu_count()} CPUs, " + " ".join(f for f in want if f in flags)


def _med(rows: list[dict], key: str) -> tuple[float, float, float]:
    vals = [r[key] for r in rows]
    return statistics.median(vals), min(vals), max(vals)


def print_table(runs: dict, devices: list[str], args) -> None:
    print(f"\nllama-bench -t {args.threads} -p {args.prompt} -n {args.gen} -r {args.repeat} vs rocmforge bench "
          f"--prompt {args.prompt} --gen {args.gen} --repeat {args.repeat}; median of {args.rounds} alternated "
          "rounds [min-max]\n")
    print(f"machine: {machine()}\n")
    print("| model | engine | pp t/s | tg t/s | pp ratio | tg ratio | max RSS MiB (file MiB) | RSS target "
          "1.3 x file + KV |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, rec in runs.items():
        lp, lt = _med(rec["llama"], "pp"), _med(rec["llama"], "tg")
        print(f"| {name} | llama.cpp | {lp[0]:.1f} [{lp[1]:.0f}-{lp[2]:.0f}] | {lt[0]:.1f} [{lt[1]:.0f}-{lt[2]:.0f}] "
              f"| 1.00 | 1.00 | ({rec['file_mib']:.0f}) | |")
        for d in devices:
            p, t = _med(rec[d], "pp"), _med(rec[d], "tg")
            rss = max((r["max_rss_mib"] or 0) for r in rec[d])
            target = 1.3 * rec["file_mib"] + max(r.get("kv_mib", 0) for r in rec[d])
            print(f"| {name} | rocmforge {d} | {p[0]:.1f} [{p[1]:.0f}-{p[2]:.0f}] | {t[0]:.1f} [{t[1]:.0f}-{t[2]:.0f}] "
                  f"| {p[0] / lp[0]:.2f} | {t[0] / lt[0]:.2f} | {rss:.0f} ({rec['file_mib']:.0f}) | {target:.0f} |")
    for name, rec in runs.items():
        for d in devices:
            k = rec[d][-1].get("kernels") if rec[d] else None
            if k:
                print(f"\n{name} {d}: {k}")


if __name__ == "__main__":
    raise SystemExit(main())
