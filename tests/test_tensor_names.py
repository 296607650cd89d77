"""Every HF -> GGUF name pair of every registered tensor map agrees with gguf-py.

gguf-py's ``TensorNameMap`` is what llama.cpp's converter uses, so a pair it
disagrees with would make our GGUF files differ from llama.cpp's. HF names are
checked without their ``.weight``/``.bias`` suffix (as gguf-py stores them);
per-expert ``{j}`` patterns are checked in the merged form the converter
names (``...experts.{j}.w1`` -> ``...experts.w1``).
"""

from __future__ import annotations

import re

import pytest

gguf = pytest.importorskip("gguf")

from rocmforge.registry import architectures  # noqa: E402 - after the gguf importorskip

N_BLOCKS = 4

# (architecture, HF name regex (with {i} -> 0, suffix removed)) pairs gguf-py's TensorNameMap
# does not map, with why our pair is right anyway.
UNKNOWN_TO_GGUF_PY: dict[tuple[str, str], str] = {
    ("stablelm", r"^model\.layers\.0\.self_attn\.[qk]_layernorm\.norms$"):
        "one LayerNorm per head in HF; llama.cpp's converter stacks them as model.layers.{bid}.self_attn."
        "{q,k}_layernorm, which TensorNameMap maps to attn_q_norm / attn_k_norm",
    ("bloom", r"^transformer\.(word_embeddings_layernorm|h\.0\.post_attention_layernorm)$"):
        "llama.cpp's BLOOM converter strips 'transformer.' before TensorNameMap, which maps the stripped "
        "names (word_embeddings_layernorm -> token_embd_norm, h.{bid}.post_attention_layernorm -> ffn_norm)",
    ("*", r"^model\.layers\.0\.mlp\.experts\.gate_up_proj$"):
        "transformers>=5 in-memory fused experts (gate rows then up rows), split by hf_fused; "
        "converters only ever see the per-expert names save_pretrained writes",
    ("*", r"^model\.layers\.0\.mlp\.gate\.e_score_correction_bias$"):
        "a buffer named *_bias, not *.bias: llama.cpp's converter renames it to e_score_correction.bias "
        "(ModelBase.modify_tensors) before TensorNameMap maps it to exp_probs_b",
    ("ernie4_5_moe", r"^model\.layers\.0\.mlp\.(gate\.)?moe_statics\.e_score_correction_bias$"):
        "the same *_bias buffer under ERNIE's moe_statics (checkpoint name; gate.moe_statics in transformers>=5): "
        "llama.cpp's converter renames it to e_score_correction.bias before TensorNameMap maps it to exp_probs_b",
    ("gpt_oss", r"^model\.layers\.0\.mlp\.experts\.(gate_up_proj|down_proj)_bias$"):
        "transformers' gpt-oss expert biases (gate/up interleaved); llama.cpp's converter renames them "
        "(gate_up_proj_bias -> gate_proj.bias + up_proj.bias by even/odd column, down_proj_bias -> "
        "down_proj.bias) before its TensorNameMap lookup",
    ("lfm2moe", r"^model\.layers\.0\.feed_forward\.experts\.w[123]$"):
        "llama.cpp's LFM2MoeModel.modify_tensors stacks the experts as layers.{bid}.feed_forward.experts.w1/w2/w3 "
        "(no 'model.' prefix), which TensorNameMap maps to ffn_gate_exps / ffn_down_exps / ffn_up_exps",
    ("lfm2moe", r"^lm_head$"):
        "the released LFM2-MoE models tie the head (llama.cpp's lfm2moe has no output tensor and its converter "
        "refuses lm_head); an untied HF export's lm_head.weight still has to map somewhere",
    ("gemma2", r"^lm_head$"):
        "Gemma 2 always ties the head: gguf-py lists no 'output' for gemma2 and llama.cpp duplicates "
        "token_embd; an exported lm_head.weight (a copy of the embedding) still has to map somewhere",
    ("mamba2", r"^backbone\.layers\.0\.mixer\.dt_bias$"):
        "llama.cpp's Mamba-2 converter renames dt_bias to dt_proj.bias (Mamba2Model.filter_tensors) before "
        "TensorNameMap maps it to ssm_dt (.bias)",
    ("*", r"^model\.layers\.0\.linear_attn\.dt_bias$"):
        "Gated DeltaNet's dt_bias (Qwen3-Next, Qwen3.5): llama.cpp's Qwen3NextModel.modify_tensors renames it "
        "to dt_proj.bias before TensorNameMap maps it to ssm_dt (.bias)",
    ("granitemoe", r"^model\.layers\.0\.block_sparse_moe\.(input_linear|experts\.gate_up_proj)$"):
        "JetMoE-fused gate|up experts, split by hf_fused: llama.cpp's converter splits input_linear "
        "by hand (GraniteMoeModel.modify_tensors); experts.gate_up_proj is transformers>=5's in-memory name",
    ("granitemoe", r"^model\.layers\.0\.block_sparse_moe\.(router|experts\.down_proj)$"):
        "transformers>=5's in-memory names of router.layer and output_linear (its conversion_mapping)",
    ("granitemoehybrid", r"^model\.layers\.0\.mamba\.dt_bias$"):
        "llama.cpp's Mamba-2 converter renames dt_bias to dt_proj.bias (Mamba2Model.filter_tensors) before "
        "TensorNameMap maps it to ssm_dt (.bias)",
    ("granitemoehybrid", r"^model\.layers\.0\.block_sparse_moe\.(input_linear|router|experts\.(gate_up_proj|down_proj))$"):
        "the granitemoe experts and router (split by hand in GraniteMoeModel.modify_tensors; router and "
        "experts.* are transformers>=5's in-memory names)",
    ("granitemoehybrid", r"^model\.layers\.0\.shared_mlp\.(input_linear|output_linear)$"):
        "GraniteMoeModel.modify_tensors splits input_linear by hand and names the shared MLP by the expert "
        "count: ffn_{gate,up,down}_shexp beside experts, ffn_{gate,up,down} without",
    ("falcon_h1", r"^model\.layers\.0\.mamba\.dt_bias$"):
        "llama.cpp's Mamba-2 converter renames dt_bias to dt_proj.bias (Mamba2Model.filter_tensors) before "
        "TensorNameMap maps it to ssm_dt (.bias)",
    ("falcon_h1", r"^model\.layers\.0\.pre_ff_layernorm$"):
        "for falcon-h1 gguf-py lists the name with its suffix (pre_ff_layernorm.weight -> FFN_PRE_NORM, named "
        "blk.{bid}.ffn_norm), so llama.cpp's file holds blk.{i}.ffn_norm without .weight: our ffn_norm",
    ("apertus", r"^model\.layers\.0\.mlp\.act_fn\.(alpha_p|alpha_n|beta|eps)$"):
        "xIELU's learned scalars: llama.cpp's converter folds them into xielu.* metadata arrays (read as "
        "hparams when a GGUF lacks these tensors)",
    ("llama4", r"^model\.layers\.0\.feed_forward\.experts\.gate_up_proj$"):
        "(E, n_embd, 2*n_ff) gate columns then up columns: llama.cpp's Llama4Model.modify_tensors splits and "
        "transposes it into ffn_gate_exps / ffn_up_exps, as first/second_half_cols_t do",
}

# (GGUF arch id, canonical name) pairs gguf-py does not list for the architecture, with why we have them.
NOT_IN_GGUF_ARCH: dict[tuple[str, str], str] = {
    ("gemma2", "output"): "tied_to token_embd; only present when an HF export carries lm_head.weight",
    ("lfm2moe", "output"): "tied_to token_embd; only present when an HF export carries lm_head.weight",
    **{("apertus", f"blk.{{i}}.ffn_xielu_{p}"): "xIELU scalars of an HF checkpoint; llama.cpp's GGUF holds "
       "them as xielu.* metadata arrays instead" for p in ("alpha_p", "alpha_n", "beta", "eps")},
}


def _gguf_arch(arch_id: str):
    for arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch_id:
            return arch
    return None


def _strip(name: str) -> str:
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _pairs():
    """(arch, gguf arch id, canonical, hf name) for every hf name of every map entry."""
    out = []
    for name, spec in sorted(architectures().items()):
        arch_id = spec.recipe_obj.gguf_archs[0] if spec.recipe_obj.gguf_archs else None
        for canon, entry in spec.map_obj.tensors.items():
            for hf in [*entry.hf, *entry.hf_fused]:
                out.append(pytest.param(name, arch_id, canon, hf, id=f"{name}:{canon}<-{hf}"))
    return out


def _canonicals():
    out = []
    for name, spec in sorted(architectures().items()):
        for arch_id in spec.recipe_obj.gguf_archs:
            for canon in spec.map_obj.tensors:
                out.append(pytest.param(name, arch_id, canon, id=f"{name}:{arch_id}:{canon}"))
    return out


@pytest.mark.parametrize(("name", "arch_id", "canon", "hf"), _pairs())
def test_hf_name_maps_to_canonical(name, arch_id, canon, hf):
    arch = _gguf_arch(arch_id) if arch_id else None
    if arch is None:
        pytest.skip(f"{name}: GGUF arch '{arch_id}' unknown to gguf-py")
    hf0 = _strip(hf.replace("{i}", "0").replace(".{j}", ""))
    for arch_name, pattern in UNKNOWN_TO_GGUF_PY:
        if arch_name in ("*", name) and re.match(pattern, hf0):
            return
    want = _strip(canon.replace("{i}", "0"))
    got = gguf.TensorNameMap(arch, N_BLOCKS).get_name(hf0)
    assert got == want, (f"{name}: mappings say '{hf}' -> '{canon}', gguf-py's TensorNameMap({arch_id}) "
                         f"says '{hf0}' -> {got!r}")


@pytest.mark.parametrize(("name", "arch_id", "canon"), _canonicals())
def test_canonical_name_is_a_gguf_tensor_of_the_arch(name, arch_id, canon):
    arch = _gguf_arch(arch_id)
    if arch is None:
        pytest.skip(f"GGUF arch '{arch_id}' unknown to gguf-py")
    if (arch_id, canon) in NOT_IN_GGUF_ARCH:
        return
    known = {gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") for t in gguf.MODEL_TENSORS[arch]}
    assert _strip(canon) in known, (f"{name}: canonical tensor '{canon}' is not a tensor of GGUF arch "
                                    f"'{arch_id}' in gguf-py (known: {sorted(known)})")
