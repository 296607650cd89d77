"""Adjacent recipe steps that the executor runs as one backend call.

A pre-norm block ends its attention half with ``x = x + h`` and starts its FFN
half with ``h = rms_norm(x)``: two passes over the residual stream, and on a GPU
two launches plus the int8 quantisation of the norm's output for the matvecs.
:func:`fuse_steps` finds such pairs in a recipe's step list (by op and by the
names they read and write, never by architecture) and replaces each by one
``add_rms_norm`` step that calls ``Backend.add_rms_norm``. Steps with an ``if:``
stay apart (their condition may differ per layer).

:func:`across_layers` finds the same pair across the layer boundary: a block
that ends with ``x = x + h`` and starts with ``h = rms_norm(x)`` lets the
executor run layer l's last add with layer l + 1's first norm as one step.
"""

from __future__ import annotations


def fuse_steps(steps: list[dict]) -> list[dict]:
    out: list[dict] = []
    i = 0
    while i < len(steps):
        a = steps[i]
        b = steps[i + 1] if i + 1 < len(steps) else None
        if (b is not None and a["op"] == "add" and b["op"] == "rms_norm" and "if" not in a and "if" not in b
                and b["in"] == a["out"] and isinstance(a.get("in"), list) and len(a["in"]) == 2):
            out.append({"op": "add_rms_norm", "add": a, "norm": b})
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def add_rms_norm(ctx, step):
    """{op: add_rms_norm, add: <add step>, norm: <rms_norm step>}: made by fuse_steps, not written in recipes."""
    add, norm = step["add"], step["norm"]
    w = ctx.tensor(norm["weight"]) if "weight" in norm else None
    s, y = ctx.backend.add_rms_norm(ctx.get(add["in"][0]), ctx.get(add["in"][1]), w,
                                    ctx.value(norm, "eps", "norm_eps"))
    ctx.set(add["out"], s)
    ctx.set(norm["out"], y)


def across_layers(block: list[dict]) -> tuple[dict, dict] | None:
    """(first norm, last add) of a block whose last add feeds its own first norm, else None."""
    if len(block) < 2:
        return None
    first, last = block[0], block[-1]
    if first["op"] != "rms_norm" or last["op"] != "add" or "if" in first or "if" in last:
        return None
    if first["in"] != last["out"] or not isinstance(last.get("in"), list) or len(last["in"]) != 2:
        return None
    return first, last
