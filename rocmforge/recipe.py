"""The recipe executor: runs an architecture's YAML steps over a backend.

``embed`` steps run once, ``block`` steps once per layer (tensor names
relative to ``blk.{layer}.``), ``head`` steps once. A step with ``if:`` runs
only when its condition (the tiny grammar of rocmforge.expr, over hparams and
``layer``) holds. Step options that are strings are expressions, so quirks
such as Gemma's sqrt(d) embedding scale stay in YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import expr
from .errors import RocmforgeError, SchemaError, TensorMapError
from .schema import Recipe

# Step keys whose string values are names (activations, tensors, styles), never expressions.
_NAME_KEYS = {"op", "in", "out", "weight", "bias", "q", "k", "v", "o", "qkv", "q_norm", "k_norm", "rope",
              "rope_freqs", "gate", "up", "down", "gate_up", "router", "shared", "gating", "act", "if",
              "qk_norm_scope", "qk_norm_type", "sinks"}


_CACHE_DIMS = ("n_head_kv", "head_dim", "head_dim_v")


class Segment:
    """``length`` rows of the batch that continue one sequence at position ``pos0`` in ``cache``."""

    __slots__ = ("start", "length", "cache", "pos0")

    def __init__(self, start: int, length: int, cache: Any, pos0: int):
        self.start, self.length, self.cache, self.pos0 = start, length, cache, pos0


class Context:
    """What an op sees: activations, the layer's tensors, hparams, positions and the KV cache."""

    def __init__(self, executor: Executor, ids: np.ndarray, segments: list[Segment]):
        self.executor = executor
        self.backend = executor.backend
        self.hp = executor.hparams
        self.ids = ids
        # Rows of every activation belong to sequences: segments say which rows, which
        # cache and which first position. Only attention looks at them; all other ops
        # work on the stacked rows at once, which is what batching buys.
        self.segments = segments
        self.positions = np.concatenate([np.arange(s.pos0, s.pos0 + s.length) for s in segments]).astype(np.int64)
        self.layer: int | None = None
        self.env: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        try:
            return self.env[name]
        except KeyError:
            raise RocmforgeError(f"recipe {self.executor.recipe.file}: activation '{name}' is used before it is set "
                                 f"(set so far: {', '.join(self.env)})") from None

    def set(self, name: str, value: Any) -> None:
        self.env[name] = value

    def tensor(self, name: str, optional: bool = False, host: bool = False) -> Any:
        """The layer's tensor ``name`` (``blk.{layer}.name``); in embed/head steps, the model's."""
        full = f"blk.{self.layer}.{name}" if self.layer is not None else name
        return self.executor.weight(full, optional=optional, host=host)

    def model_tensor(self, name: str, optional: bool = False, host: bool = False) -> Any:
        """A tensor of the whole model (``rope_freqs``, ``position_embd``), from any step."""
        return self.executor.weight(name, optional=optional, host=host)

    def fused(self, names: list[str]) -> Any:
        """The layer's tensors ``names`` joined row-wise as one weight, or None if the backend keeps them apart."""
        prefix = f"blk.{self.layer}." if self.layer is not None else ""
        return self.executor.fused_weight(tuple(prefix + n for n in names))

    def value(self, step: dict, key: str, default: Any = None) -> Any:
        """A step option evaluated over hparams + layer; ``default`` may itself be an expression."""
        raw = step.get(key, default)
        if raw is None or not isinstance(raw, str):
            return raw
        # hparams are fixed for a model, so a value depends only on the step and the layer
        cache_key = (id(step), key, raw, self.layer)
        values = self.executor._values
        if cache_key not in values:
            env = {**self.hp, "layer": self.layer if self.layer is not None else -1}
            try:
                values[cache_key] = expr.evaluate(raw, env)
            except expr.ExprError as exc:
                raise SchemaError(self.executor.recipe.file, f"{step.get('op')}.{key}", "a valid expression",
                                  str(exc)) from None
        return values[cache_key]

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        return self.executor.cached(key, make)

    def state(self, seg: Segment, name: str) -> Any:
        """This layer's recurrent state ``name`` of the sequence of ``seg`` (updated in place by the op)."""
        state = getattr(seg.cache, "state", None)
        if state is None:
            raise RocmforgeError(f"layer {self.layer} needs recurrent state '{name}', but this cache holds none "
                                 "(declare it in the recipe's state: section; a paged view gets one "
                                 "from the engine's model step)")
        return state.get(self.layer, name)


class _Probe:
    """Just enough of a Context to evaluate step options for one layer, without activations."""

    def __init__(self, executor: Executor, layer: int | None):
        self.executor, self.hp, self.layer = executor, executor.hparams, layer

    value = Context.value


class Executor:
    def __init__(self, recipe: Recipe, hparams: dict, get_raw: Callable[[str], Any], backend,
                 ops: dict[str, Callable] | None = None):
        from .ops import all_ops, core, fused

        self.recipe = recipe
        self.hparams = hparams
        self.backend = backend
        self._get_raw = get_raw
        self._weights: dict[str, Any] = {}
        self._cache: dict[Any, Any] = {}
        self._values: dict[Any, Any] = {}
        self.on_layer: Callable[[int], None] | None = None   # progress hook, called after each layer
        self._conditions: dict[Any, bool] = {}
        # KV cache storage ("auto", "f16", "fp8", "fp8_e4m3fn", "fp8_e4m3fnuz") and the file's per-layer
        # {layer: (k_scale, v_scale)} (Quark exports); the Model sets them
        self.kv_cache_dtype = "auto"
        self.kv_scales: dict[int, tuple[float, float]] | None = None
        self.ops = ops if ops is not None else all_ops()
        for section in ("embed", "block", "head"):
            for i, step in enumerate(getattr(recipe, section)):
                if step["op"] not in self.ops:
                    raise SchemaError(recipe.file, f"{section}[{i}].op", f"one of {sorted(self.ops)}", step["op"])
        # the block as it runs: residual add + the norm that reads it joined (ops/fused.py)
        self.ops.setdefault("add_rms_norm", fused.add_rms_norm)
        builtin = self.ops["add"] is core.add and self.ops["rms_norm"] is core.rms_norm
        self.block = fused.fuse_steps(recipe.block) if builtin else list(recipe.block)
        self._seam = fused.across_layers(self.block) if builtin else None   # (first norm, last add)

    def weight(self, name: str, optional: bool = False, host: bool = False) -> Any:
        key = (name, host)
        if key not in self._weights:
            raw = self._get_raw(name)
            if raw is None:
                if optional:
                    return None
                raise TensorMapError(f"recipe {self.recipe.file} needs tensor '{name}', which the model does not have")
            # tied tensors (output -> token_embd) share one prepared copy
            shared = (id(raw), host)
            if shared not in self._weights:
                self._weights[shared] = raw.dequantize() if host else self._prepare([raw], self.backend.weight(raw))
            self._weights[key] = self._weights[shared]
        return self._weights[key]

    def fused_weight(self, names: tuple[str, ...]) -> Any:
        key = ("fused", *names)
        if key not in self._weights:
            raws = [self._get_raw(n) for n in names]
            missing = [n for n, r in zip(names, raws) if r is None]
            if missing:
                raise TensorMapError(f"recipe {self.recipe.file} needs tensor(s) {', '.join(missing)}, "
                                     "which the model does not have")
            acts = {getattr(r, "act", None) for r in raws}
            # rows whose inputs are quantised differently cannot share one matmul
            self._weights[key] = self._prepare(raws, self.backend.fuse_weights(raws)) if len(acts) == 1 else None
        return self._weights[key]

    def _prepare(self, raws: list, prepared: Any) -> Any:
        """A prepared weight with its input quantisation attached (``raw.act``, rocmforge.quant.act)."""
        act = getattr(raws[0], "act", None)
        if act is None or prepared is None:
            return prepared
        return self.backend.quantized_input(prepared, act)

    def missing_tensors(self, has: Callable[[str], bool]) -> list[str]:
        """Every tensor the forward pass reads that ``has`` says the model lacks, layer by layer."""
        from .ops.needs import step_tensors

        missing: list[str] = []
        for section in ("embed", "block", "head"):
            layers = range(self.hparams["n_layer"]) if section == "block" else [None]
            for layer in layers:
                prefix = f"blk.{layer}." if layer is not None else ""
                probe = _Probe(self, layer)
                for step in getattr(self.recipe, section):
                    if step.get("if") is not None and not self._condition(step, layer):
                        continue
                    for name, required in step_tensors(step["op"], self.ops[step["op"]], step,
                                                       lambda n, p=prefix: has(p + n), probe.value):
                        if required and not has(prefix + name) and prefix + name not in missing:
                            missing.append(prefix + name)
        return missing

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def cache_layers(self) -> dict[int, tuple[int, int, int]]:
        """{layer: (n_head_kv, head_dim, head_dim_v)} of the layers that hold K/V.

        The recipe's ``cache:`` section says which (``if:``, over hparams + ``layer``: a hybrid's
        attention layers) and at what shape (expressions that may read ``layer``); by default every
        layer at n_head_kv, head_dim, head_dim_v."""
        if "_cache_layers" not in self._cache:
            spec = {"n_head_kv": "n_head_kv", "head_dim": "head_dim", "head_dim_v": "head_dim_v or head_dim",
                    **self.recipe.cache}
            cond = spec.get("if")
            layers = {}
            for layer in range(int(self.hparams["n_layer"])):
                env = {"head_dim_v": None, **self.hparams, "layer": layer}
                if cond is not None and not expr.evaluate(str(cond), env):
                    continue
                layers[layer] = tuple(int(expr.evaluate(str(spec[k]), env)) for k in _CACHE_DIMS)
            self._cache["_cache_layers"] = layers
        return self._cache["_cache_layers"]

    def cache_dims(self) -> dict[str, int]:
        """The default per-layer K/V shape: n_head_kv, head_dim, head_dim_v (the recipe's ``cache:`` may say),
        that of the first layer holding K/V (all 0 when none does)."""
        layers = self.cache_layers()
        return dict(zip(_CACHE_DIMS, next(iter(layers.values())) if layers else (0, 0, 0)))

    def cache_per_layer(self) -> bool:
        """Whether the recipe declares its K/V layer by layer (an ``if:``, or shapes that differ between
        layers): then a cache holds exactly those layers at exactly those shapes."""
        layers = self.cache_layers()
        return "if" in self.recipe.cache or len(set(layers.values())) > 1

    def new_state(self) -> Any:
        """A fresh recurrent state of one sequence (zeros), or None when the recipe declares none."""
        shapes = self.state_shapes()
        return self.backend.new_state(shapes) if shapes else None

    def new_cache(self, max_tokens: int) -> Any:
        """One sequence's cache: the KV cache, with its recurrent state as ``cache.state`` (None without)."""
        dims = self.cache_dims()
        kv: dict[str, Any] = {}
        if self.kv_cache_dtype != "auto" or self.kv_scales:     # backends without the options keep working
            kv = {"dtype": self.kv_cache_dtype, "scales": self.kv_scales}
        if self.cache_per_layer():
            kv["layers"] = self.cache_layers()
        cache = self.backend.new_kv_cache(self.hparams["n_layer"], dims["n_head_kv"], dims["head_dim"],
                                          dims["head_dim_v"], max_tokens, **kv)
        cache.state = self.new_state()
        return cache

    def state_shapes(self) -> dict[tuple[int, str], tuple[int, ...]]:
        """{(layer, name): shape} of the recurrent state the recipe's ``state:`` section declares."""
        if "_state_shapes" not in self._cache:
            shapes = {}
            for name, spec in self.recipe.state.items():
                for layer in range(self.hparams["n_layer"]):
                    env = {**self.hparams, "layer": layer}
                    if "if" in spec and not expr.evaluate(str(spec["if"]), env):
                        continue
                    shapes[(layer, name)] = tuple(int(expr.evaluate(str(d), env)) for d in spec["shape"])
            self._cache["_state_shapes"] = shapes
        return self._cache["_state_shapes"]

    def new_paged_cache(self, num_blocks: int, block_size: int) -> Any:
        """A paged KV store of ``num_blocks`` blocks shared by many sequences (rocmforge.backends.paged).

        It holds KV only: a recurrent model's per-sequence state comes from ``new_state`` (the engine's
        model step hangs one on each sequence's view as ``view.state``). FP8 (kv_cache_dtype fp8*): codes
        with the file's per-layer scales, else a fixed 1.0 per layer (rocmforge.quant.act.kv_pool_scales:
        the pool is shared, so no request's scale may come from its own first store)."""
        dims = self.cache_dims()
        kv: dict[str, Any] = {}
        if self.kv_cache_dtype.startswith("fp8"):     # backends without the options keep working
            kv = {"dtype": self.kv_cache_dtype, "scales": self.kv_scales}
        if self.cache_per_layer():
            kv["layers"] = self.cache_layers()
        return self.backend.new_paged_kv(self.hparams["n_layer"], dims["n_head_kv"], dims["head_dim"],
                                         dims["head_dim_v"], num_blocks, block_size, **kv)

    def _run(self, steps: list[dict], ctx: Context) -> None:
        for step in steps:
            cond = step.get("if")
            if cond is not None and not self._condition(step, ctx.layer):
                continue
            self.ops[step["op"]](ctx, step)

    def _condition(self, step: dict, layer: int | None) -> bool:
        key = (id(step), layer)
        if key not in self._conditions:
            env = {**self.hparams, "layer": layer if layer is not None else -1}
            self._conditions[key] = bool(expr.evaluate(str(step["if"]), env))
        return self._conditions[key]

    def forward(self, ids, cache: Any, pos0: int, out: str = "logits", last_only: bool = False) -> Any:
        """Run the recipe for tokens ``ids`` at positions pos0..; returns the ``out`` activation (T, vocab).

        ``last_only``: the head runs on the last row only, (1, vocab) (a prefill needs no more)."""
        return self.forward_batch([(ids, cache, pos0)], out, last_only)

    def forward_batch(self, items: list[tuple[Any, Any, int]], out: str = "logits", last_only: bool = False) -> Any:
        """Several sequences at once: [(ids, cache, pos0), ...] -> stacked ``out`` rows in the same order.

        ``last_only``: one row per sequence, its last (the head's matmul over the vocabulary and the
        logits' trip to the host then cost one row per sequence instead of one per token)."""
        segments, start = [], 0
        for seq_ids, cache, pos0 in items:
            segments.append(Segment(start, len(seq_ids), cache, pos0))
            start += len(seq_ids)
        ids = np.concatenate([np.asarray(i, dtype=np.int64).reshape(-1) for i, _, _ in items])
        vocab = self.hparams.get("vocab_size")
        if vocab and ((ids < 0) | (ids >= vocab)).any():
            bad = ids[(ids < 0) | (ids >= vocab)][0]
            raise RocmforgeError(f"token id {int(bad)} is outside the vocabulary (0..{vocab - 1})")
        ctx = Context(self, ids, segments)
        with self.backend.forward_scope(len(ids)):
            self._run(self.recipe.embed, ctx)
            n_layer = self.hparams["n_layer"]
            # backend.fuse_steps (a benchmark knob): 2 joins within and across layers, 1 within, 0 none
            level = int(getattr(self.backend, "fuse_steps", 2))
            block = self.block if level >= 1 else self.recipe.block
            seam = self._seam if level >= 2 else None
            for layer in range(n_layer):
                ctx.layer = layer
                steps = block
                if seam is not None:   # layer l's last add and layer l + 1's first norm run as one step
                    steps = steps[1 if layer > 0 else 0: -1 if layer < n_layer - 1 else None]
                self._run(steps, ctx)
                if seam is not None and layer < n_layer - 1:
                    ctx.layer = layer + 1
                    self.ops["add_rms_norm"](ctx, {"add": seam[1], "norm": seam[0]})
                if self.on_layer is not None:
                    self.on_layer(layer)
            ctx.layer = None
            if last_only and len(ids) > len(segments):
                _keep_last_rows(ctx)
            self._run(self.recipe.head, ctx)
        return ctx.get(out)


def _keep_last_rows(ctx: Context) -> None:
    """Cut every token-row activation down to each sequence's last row before the head runs."""
    n = len(ctx.ids)
    if len(ctx.segments) == 1:
        pick: Any = slice(n - 1, n)
    else:
        pick = np.array([s.start + s.length - 1 for s in ctx.segments])
    for name, value in list(ctx.env.items()):
        if getattr(value, "shape", None) and value.shape[0] == n:
            ctx.env[name] = value[pick] if isinstance(pick, slice) else value[ctx.backend.upload(pick)]
    ctx.positions = ctx.positions[pick]
    ctx.ids = ctx.ids[pick]
