"""xIELU feed-forward (Apertus): down(xielu(up(x))) with coefficients learned per layer.

{op: xielu_mlp, in, up, down, alpha_p, alpha_n, beta, eps, out}

xielu(x) = a_p * x^2 + beta * x                              for x > 0
           (expm1(min(x, eps)) - x) * a_n + beta * x         otherwise
with a_p = softplus(alpha_p) and a_n = beta + softplus(alpha_n), ``alpha_p`` / ``alpha_n`` being
the raw learned parameters (arXiv:2411.13010; transformers' XIELUActivation, ggml_xielu).

Each of alpha_p / alpha_n / beta / eps is ``{tensor: <layer tensor>, value: <expr>}``: the layer's
scalar tensor when the file has it (an HF checkpoint's ``mlp.act_fn.*``), else the expression
(llama.cpp's GGUF keeps the four as per-layer metadata arrays ``xielu.*``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import TensorMapError

_PARAMS = ("alpha_p", "alpha_n", "beta", "eps")


def _softplus(v: float) -> float:
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def _param(ctx, step, key: str) -> float:
    spec = step[key]
    if "tensor" in spec:
        t = ctx.tensor(spec["tensor"], optional=True, host=True)
        if t is not None:
            return float(np.asarray(t, np.float64).reshape(-1)[0])
    value = ctx.value(spec, "value") if "value" in spec else None
    if value is None:
        raise TensorMapError(f"layer {ctx.layer}: xIELU {key} is neither a tensor "
                             f"'{spec.get('tensor')}' of the file nor given by its metadata")
    return float(value)


def xielu_mlp(ctx, step):
    be = ctx.backend
    alpha_p, alpha_n, beta, eps = ctx.cached(("xielu", ctx.layer, id(step)),
                                            lambda: tuple(_param(ctx, step, k) for k in _PARAMS))
    h = be.linear(ctx.get(step["in"]), ctx.tensor(step["up"]))              # (T, n_ff)
    h = be.xielu(h, _softplus(alpha_p), beta + _softplus(alpha_n), beta, eps)
    ctx.set(step["out"], be.linear(h, ctx.tensor(step["down"])))


def _tensors(step, has, value):
    yield step["up"], True
    yield step["down"], True
    for key in _PARAMS:
        if "tensor" in step[key]:
            yield step[key]["tensor"], False


xielu_mlp.tensors = _tensors
