"""Recipe ops: the verbs an architecture YAML is written in.

Each op is ``fn(ctx, step)``: it reads activations and tensors named in the
step, computes with the backend's primitives and stores ``step["out"]``.
Built-in ops are listed here; plugins add more through ``register_ops``.
"""

from __future__ import annotations

from collections.abc import Callable

from . import attention, core, deltanet, ffn, mla, moe, moe_oss, per_layer, ssm
from .short_conv import short_conv
from .xielu import xielu_mlp

OpFn = Callable[["object", dict], None]

BUILTIN_OPS: dict[str, OpFn] = {
    "embedding": core.embedding,
    "position_embedding": core.position_embedding,
    "rms_norm": core.rms_norm,
    "layer_norm": core.layer_norm,
    "add": core.add,
    "scale": core.scale,
    "output": core.output,
    "attention": attention.attention,
    "swiglu": ffn.gated_ffn,   # gate act: silu by default
    "geglu": ffn.geglu,
    "mlp": ffn.mlp,
    "moe": moe.moe,
    "xielu_mlp": xielu_mlp,
    "mla": mla.mla,
    "moe_oss": moe_oss.moe_oss,
    "per_layer_inputs": per_layer.per_layer_inputs,
    "per_layer_mix": per_layer.per_layer_mix,
    "scale_by": per_layer.scale_by,
    "mamba": ssm.mamba,
    "mamba2": ssm.mamba2,
    "gated_delta_net": deltanet.gated_delta_net,
    "short_conv": short_conv,
}


def all_ops() -> dict[str, OpFn]:
    """Built-in ops plus those plugins register (a plugin may not replace a built-in)."""
    from ..errors import PluginError
    from ..plugin_manager import get_plugin_manager

    ops = dict(BUILTIN_OPS)

    def register(name: str, fn: OpFn) -> None:
        if name in ops:
            raise PluginError(f"recipe op '{name}' is already defined; choose another name")
        ops[name] = fn

    get_plugin_manager().hook.register_ops(register=register)
    return ops
