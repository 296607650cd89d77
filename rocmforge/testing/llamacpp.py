"""llama.cpp's own HF -> GGUF converter, as a second opinion on every architecture's GGUF form.

Our tiny GGUF files are written through our own tensor map, which proves the
map consistent with itself; a GGUF a user downloads was written by
llama.cpp's ``convert_hf_to_gguf.py``. This module runs that converter (the
copy vendored in the llama-cpp-python sdist, pinned below) on a tiny HF model
so the conformance suite can hold its output to transformers too.

Where the source comes from, first hit wins: ``ROCMFORGE_LLAMA_CPP`` (a
llama.cpp tree), the cache folder, or ``pip download`` of the sdist (the
converter, its ``conversion`` package and ``gguf-py`` are kept, nothing is built).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# Runs in a fresh interpreter: the converter brings its own gguf-py, which must not meet ours.
# Tokenizers are out of scope here (vocab 256 random models), so set_vocab writes nothing.
_DRIVER = r"""
import sys
src, model, out = sys.argv[1:4]
sys.path.insert(0, src)
sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", "f32"]
import convert_hf_to_gguf as conv
_get = conv.get_model_class
def get_model_class(name, mmproj=False):
    cls = _get(name, mmproj)
    # every class on the way, and their subclasses: a wrapper (Mistral3Model) delegates to an inner model
    todo, seen = list(cls.__mro__), set()
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        todo.extend(k.__subclasses__() if k is not object else [])
        if "set_vocab" in k.__dict__:
            k.set_vocab = lambda self: None
    if getattr(cls, "supports_mtp_export", False):
        cls.no_mtp = True          # tiny models carry no multi-token-prediction layers (--no-mtp)
    return cls
conv.get_model_class = get_model_class
conv.main()
"""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rocmforge" / SDIST.replace("==", "-")


def source_dir(download: bool = True) -> Path | None:
    """A folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/, or None when none can be had."""
    env = os.environ.get("ROCMFORGE_LLAMA_CPP")
    if env:
        return Path(env) if (Path(env) / "convert_hf_to_gguf.py").exists() else None
    dest = cache_dir()
    if (dest / "convert_hf_to_gguf.py").exists():
        return dest
    if not download:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        # pip prepares the sdist's metadata in an isolated build environment (about a minute, once)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-q", "-d", tmp, SDIST], capture_output=True, text=True, timeout=900)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            return None
        _extract(sdists[0], dest)
    return dest if (dest / "convert_hf_to_gguf.py").exists() else None


def _extract(sdist: Path, dest: Path) -> None:
    """Unpack the converter's files into ``dest``; safe when several test processes race to do it."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name.split("/vendor/llama.cpp/", 1)
            if len(rel) == 2 and rel[1].startswith(_KEEP) and (m.isfile() or m.isdir()):
                m.name = rel[1]
                members.append(m)
        tar.extractall(part, members=members, filter="data")
    try:
        part.rename(dest)
    except OSError:          # another process finished first: keep its copy
        shutil.rmtree(part, ignore_errors=True)


def write_vocab_stub(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json of ``vocab_size`` tokens: some converters read the vocabulary size from it."""
    path = folder / "tokenizer.json"
    if path.exists():
        return
    vocab = {f"<t{i}>": i for i in range(vocab_size)}
    path.write_text(json.dumps({"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
                                "post_processor": None, "decoder": None,
                                "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<t0>"}}))


def convert(hf_dir: str | Path, out_path: str | Path, src: Path) -> Path:
    """Run llama.cpp's converter on ``hf_dir``; raises RuntimeError with its log when it fails."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    vocab = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
    if vocab:
        write_vocab_stub(hf_dir, int(vocab))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("NO_LOCAL_GGUF", None)
    r = subprocess.run([sys.executable, "-c", _DRIVER, str(src), str(hf_dir), str(out_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 or not out_path.exists():
        log = (r.stdout + r.stderr).strip()
        if "is not supported" in log or "not supported!" in log:
            raise NotImplementedError(f"llama.cpp's converter does not handle {cfg.get('architectures')}")
        tail = "\n".join(log.splitlines()[-6:])
        raise RuntimeError(f"llama.cpp's converter failed on {hf_dir.name}:\n{tail}")
    return out_path
