"""How each recipe op shards its weights over N ranks (Megatron-style), decided by the op, never the architecture.

A rule is ``rule(step, probe) -> StepShard``: which of the step's tensors are cut and how
(rocmforge.parallel.shards.Shard: per-rank ranges of one axis and the role the cut gives the
weight), and the step options the ranks run it with (their head counts, say). ``probe`` gives
the step's options evaluated for this layer (``probe.value``), the full tensors' shapes
(``probe.shape``, ``probe.has``), the number of ranks ``probe.n``, the MoE mode ``probe.moe`` and the embedding mode ``probe.embedding``.
Every op's output is whole on every rank again (after its one all-reduce or all-gather), so the
residual stream and the norms between ops stay replicated and need no rule but ``replicated``.

A plugin op declares its rule as a ``shard`` attribute of its function (as it declares
``tensors`` for rocmforge.ops.needs); an op without one refuses tensor parallelism by name,
rather than run replicated or wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .shards import Shard, ShardError, even, split


@dataclass
class StepShard:
    tensors: dict[str, Shard] = field(default_factory=dict)    # tensor name (relative to the layer) -> cut
    options: dict[str, Any] = field(default_factory=dict)      # step options as the ranks run the step


Rule = Callable[[dict, Any], StepShard]


def local_kv_heads(n_kv: int, n: int) -> int:
    """KV heads each rank holds: n_kv / n, or one (replicated) when there are fewer KV heads than ranks."""
    if n_kv % n == 0:
        return n_kv // n
    if n % n_kv == 0:
        return 1
    raise ShardError(f"{n_kv} KV heads split over {n} ranks neither evenly nor by replication "
                     f"(the ranks must divide, or be a multiple of, the KV head count)")


def replicated(step: dict, p) -> StepShard:
    """Weights (norm vectors, scales) whole on every rank; the op runs on the replicated activations."""
    return StepShard()


def attention(step: dict, p) -> StepShard:
    """Heads by KV-head groups: q/k/v (or the fused qkv) column-parallel, o row-parallel (one all-reduce).

    Rank r holds query heads r*H/n .. (r+1)*H/n and the KV heads they read; with fewer KV heads
    than ranks each rank holds the one KV head its query heads share (replicated)."""
    if p.value(step, "alibi", False):
        raise ShardError("ALiBi slopes are made for all heads at once; sharding them is not implemented yet")
    if step.get("head_dims_from_tensors"):
        raise ShardError("head_dims_from_tensors (per-layer head sizes read from the tensors) is not sharded yet")
    if "q_norm" in step and step.get("qk_norm_scope", "head") == "all":
        raise ShardError("qk_norm_scope: all normalises q and k over all heads at once, which needs a "
                         "reduction across ranks; not implemented yet")
    n = p.n
    H = int(p.value(step, "n_head", "n_head"))
    Hkv = int(p.value(step, "n_head_kv", "n_head_kv"))
    D = int(p.value(step, "head_dim", "head_dim"))
    if H % n:
        raise ShardError(f"{H} query heads do not split over {n} ranks")
    kv = local_kv_heads(Hkv, n)
    hq, group = H // n, H // Hkv
    Dq = 2 * D if p.value(step, "q_gate", False) else D
    Dv = p.shape(step["o"])[1] // H
    shared = int(p.value(step, "kv_from", -1)) >= 0
    bias = bool(p.value(step, "bias", False))

    def heads(per: int, first: Callable[[int], int], count: int, offset: int = 0) -> list[tuple[int, int]]:
        return [(offset + first(r) * per, offset + (first(r) + count) * per) for r in range(n)]

    q = heads(Dq, lambda r: r * hq, hq)

    def kv_rows(per: int, offset: int = 0):
        return heads(per, lambda r: (r * hq) // group, kv, offset)      # the KV heads of rank r's query heads

    t: dict[str, Shard] = {}
    names = [step["q"]] if shared else []
    if not shared and "qkv" in step and ("q" not in step or p.has(step["qkv"])):
        qw, kw = H * Dq, Hkv * D
        t[step["qkv"]] = split(0, [[a, b, c] for a, b, c in zip(q, kv_rows(D, qw), kv_rows(Dv, qw + kw))])
        names = [step["qkv"]]
    elif not shared:
        t[step["q"]], t[step["k"]], t[step["v"]] = split(0, q), split(0, kv_rows(D)), split(0, kv_rows(Dv))
        names = [step["q"], step["k"], step["v"]]
    else:
        t[step["q"]] = split(0, q)
    if bias:
        for name in names:
            t[name + ".bias"] = t[name]
    t[step["o"]] = split(1, heads(Dv, lambda r: r * hq, hq), "row")
    if "sinks" in step:
        t[step["sinks"]] = split(0, heads(1, lambda r: r * hq, hq))
    return StepShard(t, {"n_head": hq, "n_head_kv": kv})


def gated_ffn(step: dict, p) -> StepShard:
    """gate and up (or the fused gate_up) column-parallel, down row-parallel: one all-reduce."""
    n = p.n
    t: dict[str, Shard] = {}
    if "gate_up" in step:
        ff = p.shape(step["gate_up"])[0] // 2
        t[step["gate_up"]] = split(0, [[(a, b), (ff + a, ff + b)] for a, b in even(ff, n)])
    else:
        ff = p.shape(step["gate"])[0]
        t[step["gate"]] = t[step["up"]] = split(0, even(ff, n))
        if p.value(step, "bias", False):
            t[step["gate"] + ".bias"] = t[step["up"] + ".bias"] = t[step["gate"]]
    t[step["down"]] = split(1, even(ff, n), "row")
    return StepShard(t)


def mlp(step: dict, p) -> StepShard:
    """up column-parallel, down row-parallel (a down bias is added once, after the all-reduce)."""
    ff = p.shape(step["up"])[0]
    t = {step["up"]: split(0, even(ff, p.n)), step["down"]: split(1, even(ff, p.n), "row")}
    if p.value(step, "bias", False):
        t[step["up"] + ".bias"] = t[step["up"]]
    return StepShard(t)


def _shared_expert(shared: dict, p) -> dict[str, Shard]:
    ff = p.shape(shared["gate"])[0]
    cols = split(0, even(ff, p.n))
    return {shared["gate"]: cols, shared["up"]: cols, shared["down"]: split(1, even(ff, p.n), "row")}


def moe(step: dict, p) -> StepShard:
    """Whole experts per rank when the ranks divide the expert count (expert-parallel; each rank runs the
    tokens routed to its experts), else each expert's feed-forward sliced as a dense one; the router
    is replicated; a shared expert is a dense column/row pair. One all-reduce for the experts."""
    n = p.n
    E = p.shape(step["router"])[0]
    t: dict[str, Shard] = {}
    options: dict[str, Any] = {}
    if E % n == 0 and p.moe != "slices":
        whole = split(0, even(E, n), "experts")
        for key in ("gate", "up", "down"):
            t[step[key]] = whole
        options["expert_shards"] = n
    elif p.moe == "experts":
        raise ShardError(f"{E} experts do not split over {n} ranks (moe='experts' was asked for)")
    else:
        ff = p.shape(step["gate"])[1]
        t[step["gate"]] = t[step["up"]] = split(1, even(ff, n))
        t[step["down"]] = split(2, even(ff, n), "row")
    if step.get("shared"):
        t.update(_shared_expert(step["shared"], p))
    return StepShard(t, options)


def moe_oss(step: dict, p) -> StepShard:
    """gpt-oss experts, expert-parallel only: each expert adds its down bias, so slicing one would add it n times."""
    n = p.n
    E = p.shape(step["router"])[0]
    if E % n:
        raise ShardError(f"{E} experts do not split over {n} ranks (gpt-oss experts shard whole)")
    whole = split(0, even(E, n), "experts")
    t = {}
    for key in ("gate", "up", "down"):
        t[step[key]] = t[step[key] + ".bias"] = whole
    return StepShard(t, {"expert_shards": n})


def embedding(step: dict, p) -> StepShard:
    """Vocabulary-parallel rows when the ranks divide the vocabulary, else (or when the plan asks,
    ``p.embedding == "replicated"``: captured decode graphs look tokens up on the device) whole."""
    V = p.shape(step["weight"])[0]
    if V % p.n or p.embedding == "replicated":
        return StepShard()
    return StepShard({step["weight"]: split(0, even(V, p.n), "vocab")})


def output(step: dict, p) -> StepShard:
    """The head vocabulary-parallel (each rank its slice of the logits, then one all-gather), as embedding."""
    V = p.shape(step["weight"])[0]
    if V % p.n:
        return StepShard()
    rows = even(V, p.n)
    t = {step["weight"]: split(0, rows, "vocab")}
    if p.value(step, "bias", False):
        t[step["weight"] + ".bias"] = split(0, rows)
    return StepShard(t)


RULES: dict[str, Rule] = {
    "embedding": embedding,
    "output": output,
    "attention": attention,
    "swiglu": gated_ffn,
    "geglu": gated_ffn,
    "mlp": mlp,
    "xielu_mlp": mlp,
    "moe": moe,
    "moe_oss": moe_oss,
    **{op: replicated for op in ("rms_norm", "layer_norm", "add", "scale", "position_embedding", "scale_by",
                                 "add_rms_norm")},
}

# Ops that run but do not shard yet: tensor parallelism refuses the model, naming the op and why.
REFUSED: dict[str, str] = {
    "mla": "multi-head latent attention (one cached latent shared by all heads, absorbed projections)",
    "mamba": "a recurrent Mamba layer (its scan state is not sharded)",
    "mamba2": "a recurrent Mamba-2 layer (its scan state is not sharded)",
    "gated_delta_net": "a recurrent Gated DeltaNet layer (its state is not sharded)",
    "short_conv": "a recurrent short-convolution layer (its state is not sharded)",
    "per_layer_inputs": "per-layer input embeddings (Gemma 3n / Gemma 4)",
    "per_layer_mix": "per-layer input embeddings (Gemma 3n / Gemma 4)",
}


def rule_for(op: str, fn: Callable) -> Rule:
    """The op's own ``shard`` rule, else the built-in one; an op with none refuses."""
    own = getattr(fn, "shard", None)
    if own is not None:
        return own
    if op in REFUSED:
        raise ShardError(f"op '{op}' cannot be sharded yet: {REFUSED[op]}")
    if op not in RULES:
        raise ShardError(f"op '{op}' declares no tensor-parallel sharding (a plugin op sets "
                         "fn.shard = rule, see rocmforge.parallel.rules)")
    return RULES[op]
