"""The sharding plan of one model over N ranks: every step's rule applied, layer by layer.

:func:`build_plan` walks the recipe as the executor runs it (``if:`` conditions applied per
layer), asks each step's op for its rule (rocmforge.parallel.rules), and collects

- ``tensors``: full tensor name -> Shard (a tensor absent is whole on every rank); two steps
  that cut one tensor differently are refused;
- ``steps``: (id(step), layer) -> the step with the options its op runs with on a rank.

Every cut is checked against the tensor's shape and format here, at load time, so a model
that cannot be split fails before any weight is read, with the op, layer and tensor named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import expr
from .rules import StepShard, local_kv_heads, rule_for
from .shards import Shard, ShardError, check

MOE_MODES = ("auto", "experts", "slices")
EMBEDDING_MODES = ("vocab", "replicated")


@dataclass
class ShardPlan:
    n: int
    tensors: dict[str, Shard] = field(default_factory=dict)
    steps: dict[tuple[int, int | None], dict] = field(default_factory=dict)

    def rank_step(self, step: dict, layer: int | None) -> dict:
        """``step`` as the ranks run it at ``layer`` (the same object every time: ops cache by its id)."""
        return self.steps.get((id(step), layer), step)

    def ops_with_options(self) -> set[str]:
        return {s["op"] for s in self.steps.values()}


class _Probe:
    """What a rule sees of one step at one layer: option values and the full tensors' shapes."""

    def __init__(self, hparams: dict, layer: int | None, tensors: dict, n: int, moe: str, embedding: str):
        self.env = {**hparams, "layer": layer if layer is not None else -1}
        self.prefix = f"blk.{layer}." if layer is not None else ""
        self._tensors, self.n, self.moe, self.embedding, self.layer = tensors, n, moe, embedding, layer

    def value(self, step: dict, key: str, default: Any = None) -> Any:
        raw = step.get(key, default)
        return expr.evaluate(raw, self.env) if isinstance(raw, str) else raw

    def has(self, name: str) -> bool:
        return self.prefix + name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        t = self._tensors.get(self.prefix + name)
        if t is None:
            raise ShardError(f"the step names tensor '{self.prefix + name}', which the model does not have")
        return tuple(int(s) for s in t.raw.shape)


def build_plan(executor, tensors: dict, n: int, moe: str = "auto", embedding: str = "vocab") -> ShardPlan:
    """The plan for ``executor``'s recipe over ``n`` ranks; ``tensors`` are the model's MappedTensors.

    ``moe``: "auto" (whole experts per rank when n divides the expert count, else sliced experts),
    "experts" (whole experts or refuse) or "slices" (every expert's feed-forward sliced).
    ``embedding``: "vocab" (vocabulary-parallel where n divides the vocabulary) or "replicated"."""
    if moe not in MOE_MODES:
        raise ValueError(f"moe={moe!r}: expected one of {', '.join(MOE_MODES)}")
    if embedding not in EMBEDDING_MODES:
        raise ValueError(f"embedding={embedding!r}: expected one of {', '.join(EMBEDDING_MODES)}")
    recipe, hp = executor.recipe, executor.hparams
    plan = ShardPlan(n)
    for section in ("embed", "block", "head"):
        layers = range(int(hp["n_layer"])) if section == "block" else [None]
        for layer in layers:
            probe = _Probe(hp, layer, tensors, n, moe, embedding)
            for i, step in enumerate(getattr(recipe, section)):
                if step.get("if") is not None and not expr.evaluate(str(step["if"]), probe.env):
                    continue
                where = f"{recipe.file}: {section}[{i}] (op '{step['op']}'" + (
                    f", layer {layer})" if layer is not None else ")")
                try:
                    shard = rule_for(step["op"], executor.ops[step["op"]])(step, probe)
                    _add(plan, shard, step, layer, probe.prefix, tensors)
                except ShardError as exc:
                    raise ShardError(f"tensor_parallel={n}: {where}: {exc}") from None
    for layer, (h, _, _) in executor.cache_layers().items():
        try:
            local_kv_heads(h, n)
        except ShardError as exc:
            raise ShardError(f"tensor_parallel={n}: {recipe.file}: the KV cache of layer {layer}: {exc}") from None
    return plan


def _add(plan: ShardPlan, shard: StepShard, step: dict, layer: int | None, prefix: str, tensors: dict) -> None:
    for name, cut in shard.tensors.items():
        full = prefix + name
        t = tensors.get(full)
        if t is None:            # an optional tensor the model lacks: nothing to cut
            continue
        check(full, t.raw.qtype, tuple(int(s) for s in t.raw.shape), cut)
        if full in plan.tensors and plan.tensors[full] != cut:
            raise ShardError(f"tensor {full} is cut one way by an earlier step and another way here")
        plan.tensors[full] = cut
    if shard.options:
        plan.steps[(id(step), layer)] = {**step, **shard.options}
