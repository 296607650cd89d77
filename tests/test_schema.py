"""Recipe and tensor-map YAML: safe loading, and errors that name file, key and expectation."""

from importlib import resources
from pathlib import Path

import pytest

from rocmforge.errors import SchemaError
from rocmforge.schema import load_yaml, parse_recipe, parse_tensor_map

GOOD_RECIPE = """\
name: toy
detect: {gguf: [toy], hf: [ToyForCausalLM]}
hparams:
  n_layer: {gguf: "{arch}.block_count", hf: num_hidden_layers, type: int}
  n_head_kv: {gguf: "{arch}.attention.head_count_kv", default: n_head}
block:
  - {op: rms_norm, in: x, weight: attn_norm, out: h}
  - {op: add, in: [x, h], out: x, if: "n_layer > 0"}
"""

GOOD_MAP = """\
tensors:
  token_embd: {hf: model.embed_tokens.weight}
  output: {hf: lm_head.weight, optional: true, tied_to: token_embd}
  blk.{i}.attn_norm: {hf: "model.layers.{i}.input_layernorm.weight"}
ignore: {hf: ["model.layers.{i}.self_attn.rotary_emb.inv_freq"]}
"""


def _recipe(tmp_path: Path, text: str):
    f = tmp_path / "recipe.yaml"
    f.write_text(text)
    data, name = load_yaml(f)
    return parse_recipe(data, name)


def _map(tmp_path: Path, text: str):
    f = tmp_path / "map.yaml"
    f.write_text(text)
    data, name = load_yaml(f)
    return parse_tensor_map(data, name)


def test_good_recipe_and_map_parse(tmp_path):
    r = _recipe(tmp_path, GOOD_RECIPE)
    assert r.name == "toy"
    assert r.gguf_archs == ["toy"] and r.hf_classes == ["ToyForCausalLM"]
    assert r.hparams["n_layer"].gguf == ["{arch}.block_count"] and r.hparams["n_layer"].type == "int"
    assert r.hparams["n_head_kv"].has_default and r.hparams["n_head_kv"].default == "n_head"
    assert [s["op"] for s in r.block] == ["rms_norm", "add"]
    m = _map(tmp_path, GOOD_MAP)
    assert m.tensors["output"].tied_to == "token_embd" and m.tensors["output"].optional
    assert m.tensors["blk.{i}.attn_norm"].hf == ["model.layers.{i}.input_layernorm.weight"]
    assert m.ignore_hf == ["model.layers.{i}.self_attn.rotary_emb.inv_freq"]


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system"])
def test_python_tags_are_refused_and_nothing_runs(tmp_path, tag):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.yaml"
    f.write_text(f"name: !{tag[1:]} ['touch {marker}']\n")
    with pytest.raises(SchemaError) as exc:
        load_yaml(f)
    assert not marker.exists()
    msg = str(exc.value)
    assert str(f) in msg
    assert "python/object" in msg or "tag" in msg


def test_unsafe_python_name_tag_is_refused(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/name:os.system\n")
    with pytest.raises(SchemaError, match="evil.yaml"):
        load_yaml(f)


@pytest.mark.parametrize("text, what", [
    ("name: [unclosed\n", "valid YAML"),
    ("- just\n- a list\n", "a mapping at the top level"),
    ("", "a mapping at the top level"),
])
def test_bad_documents(tmp_path, text, what):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SchemaError) as exc:
        load_yaml(f)
    assert str(f) in str(exc.value) and what in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(SchemaError, match="readable YAML file"):
        load_yaml(tmp_path / "nope.yaml")


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


# (edited recipe text, the key path in the message, words of what was expected)
RECIPE_ERRORS = {
    "missing name": (_replace(GOOD_RECIPE, "name: toy\n", ""), "'name'", "architecture name"),
    "name not a string": (_replace(GOOD_RECIPE, "name: toy", "name: [toy]"), "'name'", "architecture name"),
    "detect not a mapping": (_replace(GOOD_RECIPE, "detect: {gguf: [toy], hf: [ToyForCausalLM]}", "detect: toy"),
                             "'detect'", "mapping"),
    "detect empty": (_replace(GOOD_RECIPE, "detect: {gguf: [toy], hf: [ToyForCausalLM]}", "detect: {gguf: []}"),
                     "'detect'", "at least one GGUF arch id or HF class"),
    "detect unknown key": (_replace(GOOD_RECIPE, "hf: [ToyForCausalLM]}", "hf: [ToyForCausalLM], onnx: [x]}"),
                           "detect.onnx", "one of"),
    "detect.gguf not strings": (_replace(GOOD_RECIPE, "gguf: [toy]", "gguf: [1, 2]"), "detect.gguf",
                                "a string or a list of strings"),
    "unknown top-level key": (GOOD_RECIPE + "blocks: []\n", "blocks", "one of"),
    "hparam not a mapping": (_replace(GOOD_RECIPE, 'n_layer: {gguf: "{arch}.block_count", hf: num_hidden_layers, '
                                                   "type: int}", "n_layer: 5"), "hparams.n_layer", "mapping"),
    "hparam bad type": (_replace(GOOD_RECIPE, "type: int", "type: integer"), "hparams.n_layer.type", "one of"),
    "hparam unknown key": (_replace(GOOD_RECIPE, "type: int", "typ: int"), "hparams.n_layer.typ", "one of"),
    "hparam bad default expression": (_replace(GOOD_RECIPE, "default: n_head", 'default: "n_head.bit_length()"'),
                                      "hparams.n_head_kv.default", "expression"),
    "hparam bad from_tensor": (_replace(GOOD_RECIPE, "type: int}", "type: int, from_tensor: {name: x}}"),
                               "hparams.n_layer.from_tensor", "axis"),
    "bad if expression": (_replace(GOOD_RECIPE, '"n_layer > 0"', '"__import__(\'os\')"'), "block[1].if",
                          "condition"),
    "if syntax error": (_replace(GOOD_RECIPE, '"n_layer > 0"', '"n_layer >"'), "block[1].if", "condition"),
    "step without op": (_replace(GOOD_RECIPE, "{op: rms_norm, in: x,", "{in: x,"), "block[0].op", "op name"),
    "step not a mapping": (_replace(GOOD_RECIPE, "  - {op: rms_norm, in: x, weight: attn_norm, out: h}",
                                    "  - rms_norm"), "block[0]", "step mapping"),
    "step bad out": (_replace(GOOD_RECIPE, "out: h}", "out: [h]}"), "block[0].out", "activation name"),
    "step bad in": (_replace(GOOD_RECIPE, "in: [x, h]", "in: [x, 1]"), "block[1].in", "activation name"),
    "empty block": (GOOD_RECIPE.split("block:")[0] + "block: []\n", "'block'", "non-empty list"),
    "embed not a list": (GOOD_RECIPE + "embed: {op: embedding}\n", "'embed'", "list of steps"),
    "chat_template not a string": (GOOD_RECIPE + "chat_template: [1]\n", "chat_template", "Jinja2"),
    "bad tiny": (GOOD_RECIPE + "tiny: [{name: t, hf_class: X, config: {vocab_size: 8}}]\n", "tiny[0]",
                 "model_type"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_ERRORS))
def test_recipe_errors_name_file_key_and_expectation(tmp_path, case):
    text, key, expected = RECIPE_ERRORS[case]
    with pytest.raises(SchemaError) as exc:
        _recipe(tmp_path, text)
    msg = str(exc.value)
    assert str(tmp_path / "recipe.yaml") in msg, msg
    assert key in msg, msg
    assert expected in msg, msg
    assert exc.value.file == str(tmp_path / "recipe.yaml")
    assert key.strip("'") in exc.value.key


def test_unknown_top_level_key_path_has_no_stray_dot(tmp_path):
    with pytest.raises(SchemaError) as exc:
        _recipe(tmp_path, GOOD_RECIPE + "blocks: []\n")
    assert exc.value.key == "blocks"


MAP_ERRORS = {
    "tied_to nowhere": (_replace(GOOD_MAP, "tied_to: token_embd", "tied_to: token_embedding"),
                        "tensors.output.tied_to", "another tensor of this map"),
    "unknown map key": (_replace(GOOD_MAP, "optional: true,", "optinal: true,"), "tensors.output.optinal",
                        "one of"),
    "optional not bool": (_replace(GOOD_MAP, "optional: true", "optional: maybe"), "tensors.output.optional",
                          "true or false"),
    "hf not strings": (_replace(GOOD_MAP, "{hf: model.embed_tokens.weight}", "{hf: {a: 1}}"),
                       "tensors.token_embd.hf", "a string or a list of strings"),
    "entry not a mapping": (_replace(GOOD_MAP, "{hf: model.embed_tokens.weight}", "[model.embed_tokens.weight]"),
                            "tensors.token_embd", "mapping"),
    "no tensors": ("ignore: {hf: []}\n", "tensors", "non-empty mapping"),
    "unknown top-level key": (GOOD_MAP + "tensor: {}\n", "tensor", "one of"),
    "ignore unknown key": (_replace(GOOD_MAP, "ignore: {hf:", "ignore: {onnx:"), "ignore.onnx", "one of"),
    "bad hf_fused": (_replace(GOOD_MAP, "{hf: model.embed_tokens.weight}",
                              "{hf_fused: {name: x, part: 2, of: 2}}"), "tensors.token_embd.hf_fused", "part"),
}


@pytest.mark.parametrize("case", sorted(MAP_ERRORS))
def test_map_errors_name_file_key_and_expectation(tmp_path, case):
    text, key, expected = MAP_ERRORS[case]
    with pytest.raises(SchemaError) as exc:
        _map(tmp_path, text)
    msg = str(exc.value)
    assert str(tmp_path / "map.yaml") in msg, msg
    assert key in msg, msg
    assert expected in msg, msg


def _shipped(kind: str) -> list[str]:
    return sorted(p.name for p in resources.files(f"rocmforge.{kind}").iterdir() if p.name.endswith(".yaml"))


def test_shipped_files_exist():
    assert "llama.yaml" in _shipped("architectures")
    assert "llama.yaml" in _shipped("mappings")


@pytest.mark.parametrize("name", _shipped("architectures"))
def test_shipped_recipes_parse(name):
    data, file = load_yaml(resources.files("rocmforge.architectures").joinpath(name))
    r = parse_recipe(data, file)
    assert r.name and r.block
    assert r.gguf_archs or r.hf_classes


@pytest.mark.parametrize("name", _shipped("mappings"))
def test_shipped_maps_parse(name):
    data, file = load_yaml(resources.files("rocmforge.mappings").joinpath(name))
    m = parse_tensor_map(data, file)
    assert "token_embd" in m.tensors


def test_shipped_recipes_only_use_known_ops():
    from rocmforge.ops import BUILTIN_OPS

    for name in _shipped("architectures"):
        data, file = load_yaml(resources.files("rocmforge.architectures").joinpath(name))
        r = parse_recipe(data, file)
        for sec in (r.embed, r.block, r.head):
            for step in sec:
                assert step["op"] in BUILTIN_OPS, f"{file}: unknown op {step['op']}"
