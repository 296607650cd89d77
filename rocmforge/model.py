"""load_model(): detect -> load -> map -> hparams -> recipe -> backend."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config_audit import check_config
from .detect import detect
from .hparams import resolve_hparams
from .recipe import Executor
from .registry import ArchSpec
from .tensor_map import MappedTensor, check_complete, map_tensors, materialize

log = logging.getLogger(__name__)


class Session:
    """One sequence's KV cache: feed tokens, get the logits of the last one."""

    def __init__(self, model: Model, max_tokens: int):
        self.model = model
        self.cache = model.executor.new_cache(max_tokens)
        self.n_past = 0
        self.tokens: list[int] = []

    @property
    def state(self):
        """The sequence's recurrent state (rocmforge.backends.state.RecurrentState), None without recurrent layers."""
        return getattr(self.cache, "state", None)

    def fork(self) -> Session:
        """An independent copy of this sequence: its KV cache and recurrent state copied."""
        other = Session(self.model, self.cache.max_tokens)
        for name in ("k", "v"):
            setattr(other.cache, name, [None if a is None else a.copy() for a in getattr(self.cache, name)])
        for name in ("k_scale", "v_scale"):     # an FP8 cache's per-layer scales (dynamic ones are set on use)
            if hasattr(self.cache, name):
                setattr(other.cache, name, list(getattr(self.cache, name)))
        other.cache.length = list(self.cache.length)
        if self.state is not None:
            other.cache.state = self.state.copy()
        other.n_past, other.tokens = self.n_past, list(self.tokens)
        return other

    def reset(self) -> None:
        """Start the sequence over: nothing fed yet, recurrent state back to zeros."""
        self.n_past, self.tokens = 0, []
        self.cache.length = [0] * len(self.cache.length)
        if self.state is not None:
            self.state.reset()

    def close(self) -> None:
        """Free the KV cache and recurrent state now (dropping the session does the same)."""
        self.cache = None

    def feed(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Run ``ids`` after what was fed before; logits of the last token (or all, (T, vocab))."""
        if not ids:
            raise ValueError("feed() needs at least one token")
        out = None
        if len(ids) == 1:   # a decode step: the GPU replays a captured graph of it
            out = self.model.backend.decode_step(self.model.executor, ids, self.cache, self.n_past)
        if out is None:
            out = self.model.executor.forward(ids, self.cache, self.n_past, last_only=not all_logits)
        self.n_past += len(ids)
        self.tokens.extend(int(i) for i in ids)
        logits = self.model.backend.to_numpy(out)
        return logits if all_logits else logits[-1]

    @staticmethod
    def feed_batch(sessions: list[Session], seqs: list[list[int]], all_logits: bool = False) -> list[np.ndarray]:
        """Feed each session its tokens in one batched forward (decode steps of many requests)."""
        model = sessions[0].model
        out = model.executor.forward_batch([(ids, s.cache, s.n_past) for s, ids in zip(sessions, seqs)],
                                           last_only=not all_logits)
        logits = model.backend.to_numpy(out)
        result, row = [], 0
        for s, ids in zip(sessions, seqs):
            n = len(ids) if all_logits else 1      # without all_logits the head ran on each last row only
            part = logits[row: row + n]
            row += n
            s.n_past += len(ids)
            s.tokens.extend(int(i) for i in ids)
            result.append(part if all_logits else part[-1])
        return result


@dataclass
class Model:
    spec: ArchSpec
    hparams: dict[str, Any]
    tensors: dict[str, MappedTensor]
    tokenizer: Any
    backend: Any
    path: str
    file_format: str
    metadata: dict[str, Any]
    file_size: int = 0

    n_file_tensors: int = 0
    kv_cache_dtype: str = "auto"     # "auto" (fp8 when the file has KV scales, else float), "f16", "fp8", ...
    kv_scales: dict[int, tuple[float, float]] | None = None   # the file's {layer: (k_scale, v_scale)}
    quark_layers: dict[str, dict[str, str]] | None = None     # Quark exports: each layer's formats (info)
    tensor_parallel: int = 1         # ranks the forward pass runs over (rocmforge.parallel)

    def __post_init__(self):
        self._materialized: dict[str, Any] = {}
        self.executor = Executor(self.spec.recipe_obj, self.hparams, self.raw_tensor, self.backend)
        kv = self.kv_cache_dtype or "auto"
        if kv not in KV_CACHE_DTYPES:
            from .errors import RocmforgeError

            raise RocmforgeError(f"kv_cache_dtype {kv!r}: expected one of {', '.join(KV_CACHE_DTYPES)}")
        if kv == "auto" and self.kv_scales:
            kv = "fp8"              # the export calibrated an FP8 KV cache: use it
        self.kv_cache_dtype = kv
        self.executor.kv_cache_dtype = kv
        self.executor.kv_scales = self.kv_scales if kv.startswith("fp8") else None

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def context_length(self) -> int:
        return int(self.hparams.get("context_length") or 4096)

    def check_tensors(self) -> None:
        """Every tensor the recipe's forward pass reads (``if:`` conditions applied) is present."""
        missing = self.executor.missing_tensors(lambda n: n in self.tensors)
        if missing:
            from .errors import TensorMapError

            raise TensorMapError(f"{self.path}: the {self.arch} forward pass needs {len(missing)} tensor(s) the "
                                 f"model does not have: {', '.join(missing[:20])}"
                                 + (" ..." if len(missing) > 20 else ""))

    def raw_tensor(self, name: str):
        """The canonical tensor ``name`` as the recipe reads it (built once; None if the model lacks it)."""
        t = self.tensors.get(name)
        if t is None:
            return None
        if name not in self._materialized:   # the file's own tensor unless stacked/split/transformed
            raw = materialize(t, self.hparams)
            act = _input_quant(t)
            if act is not None:           # the file quantises this weight's input (rocmforge.quant.act)
                raw.act = act
            self._materialized[name] = raw
        return self._materialized[name]

    _raw = raw_tensor     # its older name (tests use it)

    def kv_cache_bytes(self, n_tokens: int | None = None) -> int:
        """Bytes of one sequence's K and V over ``n_tokens`` positions (default: the context length)
        in this model's KV cache storage (float32 on the NumPy reference, fp16 on a GPU, fp8: one),
        summed over the layers that hold K/V at their own shapes (Executor.cache_layers)."""
        kv = self.kv_cache_dtype
        per = 1 if kv.startswith("fp8") else 2 if (kv == "f16" or self.backend.device != "cpu") else 4
        n = self.context_length if n_tokens is None else n_tokens
        per_pos = sum(h * (dk + dv) for h, dk, dv in self.executor.cache_layers().values())
        return per_pos * n * per

    def prepare(self, progress: bool = False) -> Model:
        """Prepare the weights for the backend now (dequantise/upload), with a progress bar if asked.

        Runs one throw-away token through the recipe, so exactly the weights the
        forward pass uses are prepared, in the form it uses them (e.g. q/k/v joined)."""
        from tqdm.auto import tqdm

        n_layer = int(self.hparams["n_layer"])
        with tqdm(total=n_layer, desc=f"preparing {self.arch} weights", unit="layer", disable=not progress,
                  leave=False) as bar:
            self.executor.on_layer = lambda layer: bar.update(1)
            try:
                self.executor.forward([0], self.executor.new_cache(1), 0)
            finally:
                self.executor.on_layer = None
        return self

    def new_session(self, max_tokens: int | None = None) -> Session:
        return Session(self, max_tokens or self.context_length)

    def logits(self, ids) -> np.ndarray:
        """Stateless full-sequence forward: float32 (T, vocab)."""
        ids = [int(i) for i in ids]
        return self.new_session(max(len(ids), 1)).feed(ids, all_logits=True).astype(np.float32, copy=False)

    def logits_batch(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """Stateless forward of several sequences in one batched pass; one (T_i, vocab) array each."""
        sessions = [self.new_session(max(len(s), 1)) for s in seqs]
        return Session.feed_batch(sessions, seqs, all_logits=True)

    def generate(self, prompt: str | list[int], max_tokens: int = 64, **sampling: Any) -> Iterator[str]:
        """Stream text pieces of the continuation of ``prompt`` (see rocmforge.generate)."""
        from .generate import generate

        return generate(self, prompt, max_tokens=max_tokens, **sampling)

    # ---- facts for `rocmforge info`
    def quant_mix(self) -> dict[str, int]:
        mix: dict[str, int] = {}
        seen = set()
        for t in self.tensors.values():
            if id(t.raw) in seen:
                continue
            seen.add(id(t.raw))
            mix[t.raw.qtype] = mix.get(t.raw.qtype, 0) + 1
        return dict(sorted(mix.items(), key=lambda kv: -kv[1]))

    def n_params(self) -> int:
        seen, n = set(), 0
        for t in self.tensors.values():
            if id(t.raw) not in seen:
                seen.add(id(t.raw))
                n += t.raw.n_elements
        return n


KV_CACHE_DTYPES = ("auto", "f16", "fp8", "fp8_e4m3fn", "fp8_e4m3fnuz")


def _input_quant(t: MappedTensor):
    """The input quantisation of a canonical tensor from its file tensors' (experts: stacked)."""
    from .quant.act import stack

    if t.parts is not None:
        return stack([getattr(p, "act", None) for p in t.parts])
    return getattr(t.source or t.raw, "act", None)


def load_model(path: str | os.PathLike, device: str = "cpu", tokenizer: bool = True,
               kv_cache_dtype: str = "auto", tensor_parallel: int = 1) -> Model:
    """Open a GGUF file or HF folder (or an installed model's short name) and build a Model.

    ``tensor_parallel``: N > 1 splits the weights over N ranks, Megatron-style (rocmforge.parallel):
    N GPUs (0..N-1) with NCCL/RCCL on device="gpu", N threads of this process on the CPU.

    ``kv_cache_dtype``: "auto" (FP8 with the file's scales when it has them, else float), "f16",
    "fp8" (the device's FP8 flavour, dynamic per-layer scales when the file has none), or the
    flavour itself: "fp8_e4m3fn" (OCP: NVIDIA, MI350/MI355) / "fp8_e4m3fnuz" (MI300)."""
    from .backends import get_backend
    from .installed_models import resolve_model
    from .loaders.detect_format import open_model_file

    resolved = resolve_model(str(path))
    loaded = open_model_file(str(resolved))
    spec = detect(loaded)
    recipe, tmap = spec.recipe_obj, spec.map_obj
    where = loaded.path
    mapped = map_tensors(tmap, loaded.format, loaded.tensors, where)
    shapes = {k: v.raw.shape for k, v in mapped.items()}
    check_config(recipe, loaded.format, loaded.metadata, where)
    hp = resolve_hparams(recipe, loaded.format, loaded.metadata, shapes, where)
    check_complete(tmap, mapped, int(hp["n_layer"]), where)
    tok = _load_tokenizer(loaded) if tokenizer else None
    backend = get_backend(device)
    log.info("loaded %s as %s (%d tensors) on %s", where, spec.name, len(mapped), backend.name)
    model = Model(spec, hp, mapped, tok, backend, where, loaded.format, loaded.metadata, loaded.file_size,
                  len(loaded.tensors), kv_cache_dtype, loaded.extra.get("kv_scales") or None,
                  loaded.extra.get("quark_layers"))
    model.check_tensors()
    if tensor_parallel != 1:
        from .parallel import shard_model

        shard_model(model, tensor_parallel)
    return model


def _load_tokenizer(loaded):
    if loaded.format == "gguf":
        if "tokenizer.ggml.tokens" not in loaded.metadata:
            return None
        from .tokenizer import Tokenizer

        return Tokenizer.from_gguf_metadata(loaded.metadata)
    folder = Path(loaded.path)
    if (folder / "tokenizer.json").exists():
        from .tokenizer import Tokenizer

        return Tokenizer.from_hf_folder(folder)
    return None
