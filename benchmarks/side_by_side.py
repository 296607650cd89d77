"""rocmforge next to llama.cpp's llama-bench: the same random-weight GGUF files, pp512 and tg128 on the GPU.

Here, beforehand (copies ~15 MiB of the llama.cpp that llama-cpp-python 0.3.36 vendors):

    python3 benchmarks/side_by_side.py --trim /work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp .llama-src

On the GPU machine (carry .llama-src and .whl; nothing is fetched):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 benchmarks/side_by_side.py --json $OUT/side_by_side.json

The run has three phases, each timed: (1) build ``llama-bench`` from --src with CUDA for sm_90 (HIP when
``hipcc`` or /opt/rocm is there) into --build-dir, in the background while (2) the GGUF files are written
to --workdir, then (3) for each model ``llama-bench -p 512 -n 128 -r 3 -fa 1 -ngl 99 -o json`` and
``rocmforge bench --device gpu --prompt 512 --gen 128 --repeat 3 --json``, one after the other (never
side by side, so neither steals the other's CPU). The table gives each engine's tokens/s and ours / theirs.

The files are llama.cpp's own mixes of random valid blocks (``gpu_decode_bench.make_llama``): every
matrix in the named type, output.weight Q6_K, norms F32, and a SentencePiece-style vocabulary in the
metadata so llama.cpp's loader takes them. ``--build-only``, ``--skip-build``, ``--only ours|llama`` and
``--combine A.json B.json`` split the work over several commands when one does not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]

# name -> make_llama keywords; the 7B/8B shapes are the published LLaMA-2-7B and LLaMA-3-8B configs
MODELS: dict[str, dict] = {
    "7b-q4_0": dict(qtype="Q4_0"),
    "7b-q4_k": dict(qtype="Q4_K"),
    "8b-q4_0": dict(qtype="Q4_0", ff=14336, n_kv=8, vocab=128256, ctx=8192, rope_base=500000.0),
    # smoke shapes: a few MB, seconds on any machine
    "tiny-q4_0": dict(qtype="Q4_0", n_layer=2, d=256, ff=512, n_head=4, n_kv=2, vocab=512, ctx=512),
    "tiny-q4_k": dict(qtype="Q4_K", n_layer=2, d=256, ff=512, n_head=4, n_kv=2, vocab=512, ctx=512),
}
DEFAULT_MODELS = "7b-q4_0,7b-q4_k,8b-q4_0"
LLAMA_SOURCE = "llama-cpp-python-0.3.36"  # whose vendored llama.cpp --trim was written for


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# --trim: the part of llama.cpp that building llama-bench and llama-server needs

# paths kept, relative to the llama.cpp root; a folder is kept whole except for _DROP_NAMES
_KEEP = (
    "CMakeLists.txt", "LICENSE", "cmake", "include", "src", "common", "licenses",
    "vendor/CMakeLists.txt", "vendor/cpp-httplib", "vendor/nlohmann", "vendor/sheredom",  # common's needs
    "tools/CMakeLists.txt", "tools/llama-bench",
    # llama-server (benchmarks/serve_bench.py): the server, its multimodal library, the UI shim (no
    # prebuilt web assets offline: it embeds none), and what those read from vendor/
    "tools/server", "tools/mtmd", "tools/ui/CMakeLists.txt", "tools/ui/ui.cpp.in", "tools/ui/ui.h.in",
    "scripts/ui-assets.cmake", "vendor/miniaudio", "vendor/stb", "vendor/hash",
    "ggml/CMakeLists.txt", "ggml/cmake", "ggml/include",
    "ggml/src/ggml-cpu", "ggml/src/ggml-cuda", "ggml/src/ggml-hip",
)
_DROP_NAMES = re.compile(r"(\.md|\.png|\.jpg|\.gif|\.svg|\.ipynb|\.pyc)$|^(__pycache__|\.git.*|tests|docs|examples)$")
# llama.cpp does add_subdirectory(<literal>) for folders the trim drops (tests, examples, app, other
# tools); those lines are commented out in the copy. ggml's other backends go through
# ggml_add_backend(), which only descends when GGML_<NAME> is on, so they need no edit.
_ADD_SUBDIR = re.compile(r"^(\s*)(add_subdirectory\(\s*([A-Za-z0-9_./-]+)\s*\))", re.M)


def trim(src: Path, dest: Path) -> int:
    """Copy the llama-bench build closure of llama.cpp ``src`` into ``dest``; returns its size in bytes."""
    src, dest = Path(src), Path(dest)
    if not (src / "tools" / "llama-bench" / "llama-bench.cpp").is_file():
        raise SystemExit(f"{src} is not a llama.cpp tree (no tools/llama-bench/llama-bench.cpp)")
    if dest.exists():
        shutil.rmtree(dest)
    def ignore(folder, names):  # names dropped inside kept folders
        return [n for n in names if _DROP_NAMES.search(n)]

    for rel in _KEEP:
        s, d = src / rel, dest / rel
        if s.is_dir():
            shutil.copytree(s, d, ignore=ignore)
        elif s.is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)
        else:
            raise SystemExit(f"{s} is missing: the trim list was written for llama-cpp-python 0.3.36's llama.cpp")
    # ggml/src itself: its top-level files only, plus the backends kept above
    for f in (src / "ggml" / "src").iterdir():
        if f.is_file():
            shutil.copy2(f, dest / "ggml" / "src" / f.name)
    edited = []
    for cm in dest.rglob("CMakeLists.txt"):
        text = cm.read_text()

        def drop(m, cm=cm):
            sub = m.group(3)
            if "$" in sub or (cm.parent / sub).is_dir():
                return m.group(0)
            edited.append(f"{cm.relative_to(dest)}: {sub}")
            return f"{m.group(1)}# trimmed by side_by_side.py: {m.group(2)}"

        new = _ADD_SUBDIR.sub(drop, text)
        if new != text:
            cm.write_text(new)
    (dest / "TRIMMED.txt").write_text(
        f"A copy of {src} holding only what building llama-bench and llama-server (CPU, CUDA, HIP) needs;\n"
        "written by rocmforge benchmarks/side_by_side.py --trim. Commented-out add_subdirectory lines:\n"
        + "".join(f"  {e}\n" for e in edited))
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    log(f"trimmed {src} -> {dest}: {size / 2**20:.1f} MiB, {sum(1 for _ in dest.rglob('*'))} entries; "
        f"{len(edited)} add_subdirectory lines commented out")
    return size


# ----------------------------------------------------------------------------------------------------
# building llama-bench

def gpu_flavour() -> str:
    """'hip' on a ROCm machine (hipcc on PATH or in /opt/rocm), else 'cuda'."""
    return "hip" if shutil.which("hipcc") or Path("/opt/rocm/bin/hipcc").exists() else "cuda"


def cmake_args(src: Path, build: Path, flavour: str, arch: str | None) -> list[str]:
    # the server is configured too (a target built only when asked for: benchmarks/serve_bench.py)
    args = ["-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON",
            # the copy has no .git of its own: without these, git would stamp the enclosing repo's commit
            f"-DLLAMA_BUILD_COMMIT={LLAMA_SOURCE}", "-DLLAMA_BUILD_NUMBER=0"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    if flavour == "cuda":
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch or '90'}", *_pip_cublas()]
    elif flavour == "hip":
        args += ["-DGGML_HIP=ON", f"-DGPU_TARGETS={arch or 'gfx942'}"]
        hipcxx = Path("/opt/rocm/llvm/bin/clang++")
        if hipcxx.exists():
            args += [f"-DCMAKE_HIP_COMPILER={hipcxx}"]
    return args


def _pip_cublas() -> list[str]:
    """CMake hints to the pip wheel's cuBLAS when the CUDA toolkit next to nvcc has none (else nothing)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    root = Path(os.path.realpath(nvcc)).parents[1]
    if list(root.glob("lib*/libcublas.so*")) + list(root.glob("targets/*/lib/libcublas.so*")):
        return []
    try:
        import nvidia.cublas as nc  # the nvidia-cublas wheel (PyTorch's and CuPy's)
    except ImportError:
        return []
    base = Path(next(iter(nc.__path__)))
    lib = sorted(base.glob("lib/libcublas.so*")), sorted(base.glob("lib/libcublasLt.so*"))
    if not (lib[0] and lib[1] and (base / "include" / "cublas_v2.h").exists()):
        return []
    log(f"[build] no cuBLAS beside {nvcc}: using the pip wheel's in {base}")
    inc = f"-I{base / 'include'}"
    return [f"-DCUDA_cublas_LIBRARY={lib[0][0]}", f"-DCUDA_cublasLt_LIBRARY={lib[1][0]}",
            f"-DCMAKE_CUDA_FLAGS={inc}", f"-DCMAKE_CXX_FLAGS={inc}"]


def bench_binary(build: Path) -> Path:
    return Path(build) / "bin" / "llama-bench"


def start_build(src: Path, build: Path, flavour: str, arch: str | None, jobs: int, logfile: Path,
                targets: tuple[str, ...] = ("llama-bench",)):
    """Configure (once) and start ``cmake --build --target TARGETS`` in the background; returns the Popen."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise SystemExit("cmake is not on PATH: llama-bench cannot be built here. Install cmake (>= 3.18, with "
                         "make or ninja), or build llama-bench elsewhere and pass --llama-bench PATH")
    if not (Path(src) / "CMakeLists.txt").is_file():
        raise SystemExit(f"no llama.cpp source at {src}: run --trim here first and carry it (see --help)")
    if flavour == "cuda" and not (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()):
        raise SystemExit("nvcc not found: a CUDA build of llama-bench needs the CUDA toolkit (or pass --flavour cpu)")
    build = Path(build)
    build.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if flavour == "cuda" and not shutil.which("nvcc") and Path("/usr/local/cuda/bin/nvcc").exists():
        env["PATH"] = "/usr/local/cuda/bin:" + env["PATH"]
    configure = [cmake, *cmake_args(src, build, flavour, arch)]
    if flavour == "cpu":
        configure.append("-DGGML_CUDA=OFF")
    script = ""
    if not any((build / f).exists() for f in ("build.ninja", "Makefile")):  # configured once; a rerun resumes
        script += " ".join(map(_q, configure)) + " && "
    script += " ".join(map(_q, [cmake, "--build", str(build), "--target", *targets, "-j", str(jobs)]))
    log(f"[build] {flavour} {' '.join(targets)} in {build} (-j{jobs}); log: {logfile}")
    out = open(logfile, "ab")  # noqa: SIM115 - stays open for the child
    return subprocess.Popen(["bash", "-c", script], stdout=out, stderr=subprocess.STDOUT, env=env)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'" if re.search(r"[^\w@%+=:,./-]", s) else s


def wait_build(proc, build: Path, logfile: Path, t0: float) -> Path:
    last = 0.0
    while proc.poll() is None:
        time.sleep(2)
        if time.time() - last > 30:
            last = time.time()
            tail = _progress(logfile)
            log(f"[build] {time.time() - t0:5.0f} s  {tail}")
    if proc.returncode != 0:
        sys.stderr.write(Path(logfile).read_text(errors="replace")[-6000:])
        raise SystemExit(f"building llama.cpp failed (exit {proc.returncode}); the whole log is {logfile}")
    binary = bench_binary(build)
    log(f"[build] done in {time.time() - t0:.0f} s: {build / 'bin'}")
    return binary


def _progress(logfile: Path) -> str:
    try:
        lines = Path(logfile).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        m = re.match(r"\s*\[\s*(\d+)/(\d+)\]|\[\s*(\d+)%\]", line)
        if m:
            return f"{m.group(1)}/{m.group(2)} steps" if m.group(1) else f"{m.group(3)}%"
    return lines[-1][:100] if lines else ""


# ----------------------------------------------------------------------------------------------------
# the two engines

def run_llama(binary: Path, gguf: Path, n_prompt: int, n_gen: int, repeat: int, timeout: float = 300) -> dict:
    cmd = [str(binary), "-m", str(gguf), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(repeat),
           "-fa", "1", "-ngl", "99", "-o", "json"]
    r = _run(cmd, timeout)
    rows = json.loads(r.stdout)
    res = {"engine": "llama.cpp", "command": " ".join(cmd)}
    for row in rows:
        key = "pp" if row.get("n_prompt") and not row.get("n_gen") else "tg"
        res[f"{key}_tps"] = float(row["avg_ts"])
        res[f"{key}_runs"] = [float(x) for x in row.get("samples_ts", [])]
        for k in ("build_commit", "gpu_info", "backends", "model_type", "model_size", "n_ubatch", "n_batch"):
            if k in row:
                res[k] = row[k]
    return res


def run_ours(gguf: Path, n_prompt: int, n_gen: int, repeat: int, device: str = "gpu", timeout: float = 600) -> dict:
    cmd = [sys.executable, "-m", "rocmforge.cli.main", "bench", str(gguf), "--device", device,
           "--prompt", str(n_prompt), "--gen", str(n_gen), "--repeat", str(repeat), "--json"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    r = _run(cmd, timeout, env)
    res = json.loads(r.stdout)
    res["engine"] = "rocmforge"
    res["command"] = " ".join(cmd)
    return res


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise RuntimeError(f"{cmd[0]} exited {r.returncode}: {' '.join(cmd)}")
    return r


# ----------------------------------------------------------------------------------------------------
# the files and the table

def model_path(workdir: Path, name: str) -> Path:
    return Path(workdir) / f"{name}.gguf"


def write_model(name: str, path: Path) -> Path:
    """Write the MODELS[name] GGUF at ``path`` (kept when it is already there and complete)."""
    from gpu_decode_bench import make_llama

    path = Path(path)
    done = path.with_suffix(".gguf.done")
    if path.exists() and done.exists():
        log(f"[gguf] {path} is there ({path.stat().st_size / 1e9:.2f} GB)")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    make_llama(str(path), tokenizer=True, **MODELS[name])
    done.write_text("ok\n")
    return path


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours and theirs else None


def format_table(rows: list[dict], n_prompt: int = 512, n_gen: int = 128) -> str:
    """A Markdown table: one row per model, llama.cpp and rocmforge tokens/s and ours / llama.cpp."""
    def f(x, spec="8.1f"):
        return format(x, spec) if isinstance(x, (int, float)) else "-"

    head = ["model", f"llama.cpp pp{n_prompt}", "ours", "ratio", f"llama.cpp tg{n_gen}", "ours", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 6) + "|"]
    for r in rows:
        ll, us = r.get("llama") or {}, r.get("ours") or {}
        cells = [r["model"]]
        for k in ("pp", "tg"):
            a, b = ll.get(f"{k}_tps"), us.get(f"{k}_tps")
            q = ratio(b, a)
            cells += [f(a), f(b), f(q, ".2f") + "x" if q is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def combine(files: list[str]) -> list[dict]:
    """Rows of several --json results, merged by model (a later file fills what an earlier one lacks)."""
    by = {}
    for fn in files:
        for r in json.loads(Path(fn).read_text())["rows"]:
            row = by.setdefault(r["model"], {"model": r["model"]})
            for k, v in r.items():
                if v is not None and not row.get(k):
                    row[k] = v
    return list(by.values())


# ----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--trim", nargs=2, metavar=("SRC", "DEST"), help="copy llama.cpp's llama-bench build closure "
                    "from SRC to DEST and exit")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of {', '.join(MODELS)} "
                    f"(default {DEFAULT_MODELS})")
    ap.add_argument("--workdir", default="/tmp/sbs", help="where the GGUF files go (several GB; default /tmp/sbs)")
    ap.add_argument("--src", default=str(ROOT / ".llama-src"), help="trimmed llama.cpp source (default .llama-src)")
    ap.add_argument("--build-dir", default="/tmp/llama-build", help="llama-bench build folder (default "
                    "/tmp/llama-build; a rerun resumes it)")
    ap.add_argument("--llama-bench", help="use this llama-bench binary instead of building one")
    ap.add_argument("--flavour", choices=["auto", "cuda", "hip", "cpu"], default="auto",
                    help="llama-bench backend: auto = hip when hipcc or /opt/rocm is there, else cuda")
    ap.add_argument("--arch", help="GPU architecture (default 90 for CUDA, gfx942 for HIP)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--build-only", action="store_true", help="build llama.cpp's --targets and exit")
    ap.add_argument("--targets", default="llama-bench", help="with --build-only: comma list of llama.cpp targets "
                    "(default llama-bench; llama-server for benchmarks/serve_bench.py)")
    ap.add_argument("--skip-build", action="store_true", help="use the llama-bench already in --build-dir")
    ap.add_argument("--only", choices=["ours", "llama"], help="run one engine only")
    ap.add_argument("--device", default="gpu", help="rocmforge's --device (default gpu)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="print the table of earlier --json results "
                    "(e.g. an --only ours and an --only llama run) and exit")
    a = ap.parse_args(argv)

    if a.trim:
        trim(Path(a.trim[0]), Path(a.trim[1]))
        return 0
    if a.combine:
        rows = combine(a.combine)
        first = json.loads(Path(a.combine[0]).read_text())
        print(format_table(rows, first.get("prompt", a.prompt), first.get("gen", a.gen)))
        if a.json:
            Path(a.json).write_text(json.dumps({"rows": rows}, indent=1))
        return 0

    names = [n for n in a.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    t_start = time.time()
    flavour = gpu_flavour() if a.flavour == "auto" else a.flavour
    want_llama = a.only != "ours"
    binary = Path(a.llama_bench) if a.llama_bench else bench_binary(Path(a.build_dir))
    proc = None
    logfile = Path(a.build_dir).with_name(Path(a.build_dir).name + ".log")
    if want_llama and not a.llama_bench and not a.skip_build:
        targets = tuple(t for t in a.targets.split(",") if t) if a.build_only else ("llama-bench",)
        proc = start_build(Path(a.src), Path(a.build_dir), flavour, a.arch, a.jobs, logfile, targets)
    if a.build_only:
        if proc is None:
            raise SystemExit("--build-only with --llama-bench, --skip-build or --only ours: nothing to build")
        wait_build(proc, Path(a.build_dir), logfile, t_start)
        return 0

    # the files, while the build runs
    paths = {}
    for n in names:
        t0 = time.time()
        paths[n] = write_model(n, model_path(Path(a.workdir), n))
        log(f"[gguf] {n}: {time.time() - t0:.0f} s")
    if proc is not None:
        wait_build(proc, Path(a.build_dir), logfile, t_start)
    if want_llama and not binary.exists():
        raise SystemExit(f"no llama-bench at {binary}: build it (drop --skip-build) or pass --llama-bench PATH")

    rows = []
    for n in names:
        row = {"model": n, "file": str(paths[n]), "shape": MODELS[n]}
        for eng in ("llama", "ours"):
            if a.only and a.only != eng:
                continue
            t0 = time.time()
            try:
                if eng == "llama":
                    row[eng] = run_llama(binary, paths[n], a.prompt, a.gen, a.repeat)
                else:
                    row[eng] = run_ours(paths[n], a.prompt, a.gen, a.repeat, a.device)
                r = row[eng]
                log(f"[{eng:5s}] {n}: pp{a.prompt} {r['pp_tps']:8.1f} t/s  tg{a.gen} {r['tg_tps']:7.1f} t/s "
                    f"({time.time() - t0:.0f} s)")
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
                row[eng] = {"error": str(e)}
                log(f"[{eng:5s}] {n}: FAILED after {time.time() - t0:.0f} s: {e}")
        rows.append(row)
        if a.json:  # after every model, so a run cut short keeps what it measured
            Path(a.json).write_text(json.dumps({"rows": rows, "prompt": a.prompt, "gen": a.gen}, indent=1))
    print(format_table(rows, a.prompt, a.gen))
    log(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
