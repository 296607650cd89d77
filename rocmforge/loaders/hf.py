"""Hugging Face model folders: config.json plus one or more .safetensors files.

Single file (``model.safetensors``), sharded (``model.safetensors.index.json``
with a ``weight_map``), or any other ``*.safetensors`` in the folder. AMD Quark
exports (``quantization_config.quant_method == "quark"``) are handed to
``rocmforge.loaders.quark`` after loading.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from .base import LoadedFile, RawTensor
from .safetensors_file import read_safetensors

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFormatError(f"{path}: {what} is not valid JSON ({str(e)[:120]}); expected a JSON object") from None
    if not isinstance(d, dict):
        raise ModelFormatError(f"{path}: {what} holds a JSON {type(d).__name__}; expected a JSON object")
    return d


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"{folder}: no config.json; expected a Hugging Face model folder "
                               "with config.json and *.safetensors")
    config = _read_json(path, "config.json")
    archs = config.get("architectures")
    if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        raise ModelFormatError(f"{path}: 'architectures' is {archs!r}; expected a non-empty list of "
                               'class names such as ["LlamaForCausalLM"]')
    return config


def _shard_files(folder: Path) -> list[Path]:
    """The .safetensors files that make up the model, checked to exist."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        index = _read_json(index_path, "the shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ModelFormatError(f"{index_path}: 'weight_map' is missing or malformed; expected "
                                   "an object mapping tensor names to shard file names")
        names = sorted(set(weight_map.values()))
        bad = [n for n in names if Path(n).name != n or n in (".", "..")]
        if bad:
            raise ModelFormatError(f"{index_path}: shard names {bad[:5]} point outside the folder; "
                                   "expected plain file names")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelFormatError(f"{folder}: shard(s) {missing[:10]} named in {INDEX_NAME} are missing "
                                   f"({len(missing)} of {len(names)}); expected every shard in the folder")
        return [folder / n for n in names]
    if (folder / SINGLE_NAME).is_file():
        return [folder / SINGLE_NAME]
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = f" (found {others[:3]}: convert them to safetensors)" if others else ""
        raise ModelFormatError(f"{folder}: no *.safetensors weights{hint}; expected {SINGLE_NAME} "
                               f"or shards listed in {INDEX_NAME}")
    return files


def _load_tensors(folder: Path) -> tuple[dict[str, RawTensor], list[Path]]:
    files = _shard_files(folder)
    tensors: dict[str, RawTensor] = {}
    where: dict[str, Path] = {}
    for f in files:
        shard, _meta = read_safetensors(f)
        for name, t in shard.items():
            if name in tensors:
                raise ModelFormatError(f"{folder}: tensor {name!r} is in both {where[name].name} and {f.name}; "
                                       "expected each tensor in one shard")
            tensors[name] = t
            where[name] = f
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        weight_map = _read_json(index_path, "the shard index")["weight_map"]
        wrong = [(n, s) for n, s in weight_map.items() if n not in where or where[n].name != s]
        if wrong:
            n, s = wrong[0]
            found = f"in {where[n].name}" if n in where else "in no shard"
            raise ModelFormatError(f"{index_path}: {len(wrong)} tensor(s) are not where the index says, e.g. "
                                   f"{n!r} is {found}; expected it in {s}")
    return tensors, files


def _convert_quark(folder: Path, config: dict[str, Any], tensors: dict[str, RawTensor]) -> dict[str, RawTensor]:
    try:
        from .quark import convert_quark_tensors  # lazy: only Quark exports need it
    except ImportError as e:
        raise ModelFormatError(f"{folder}: this is an AMD Quark export (quant_method 'quark') but Quark "
                               f"support is not available ({e}); expected rocmforge.loaders.quark") from None
    return convert_quark_tensors(config, tensors)


def read_hf_folder(path: str | os.PathLike[str]) -> LoadedFile:
    """Load a Hugging Face folder: config.json as metadata, safetensors weights as memory-mapped arrays.

    BF16 arrives as raw ``uint16`` and the float8 types as raw ``uint8``, each
    with the safetensors dtype name as ``qtype``."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: not a folder; expected a Hugging Face model folder with config.json")
    config = read_config(folder)
    tensors, files = _load_tensors(folder)
    extra: dict[str, Any] = {
        "tokenizer_dir": str(folder) if (folder / "tokenizer.json").is_file() else None,
        "generation_config": None,
        "files": [str(f) for f in files],
    }
    if (folder / "generation_config.json").is_file():
        extra["generation_config"] = _read_json(folder / "generation_config.json", "generation_config.json")
    qconf = config.get("quantization_config")
    if isinstance(qconf, dict) and qconf.get("quant_method") == "quark":
        extra["quant_config"] = qconf
        converted = _convert_quark(folder, config, tensors)
        from .quark import quark_extras

        extra.update(quark_extras(config, tensors, converted))     # KV scales, per-layer formats
        tensors = converted
    if isinstance(qconf, dict) and qconf.get("quant_method") == "mxfp4":
        from .mxfp4_experts import convert_mxfp4_experts  # transformers' MXFP4 experts (gpt-oss)

        tensors = convert_mxfp4_experts(tensors, str(folder))
    size = sum(f.stat().st_size for f in files)
    logger.debug("%s: %d tensors in %d file(s)", folder, len(tensors), len(files))
    return LoadedFile("hf", str(folder), config, tensors, size, extra)
