"""The config audit: every key of every HF config class an architecture claims is honoured,
inert or refused (rocmforge.config_audit), and a refused value stops load_model."""

import json

import pytest

from rocmforge import config_audit
from rocmforge.errors import ModelFormatError
from rocmforge.registry import architectures

transformers = pytest.importorskip("transformers")

CLASSES = [(name, cls) for name, spec in sorted(architectures().items()) for cls in spec.hf_classes]
_BASE_KEYS = set(transformers.PretrainedConfig().to_dict())


def _config_class(hf_class: str):
    model_cls = getattr(transformers, hf_class, None)
    if model_cls is None:
        pytest.skip(f"this transformers ({transformers.__version__}) has no {hf_class}")
    return model_cls.config_class


@pytest.mark.parametrize("arch,hf_class", CLASSES, ids=[f"{a}-{c}" for a, c in CLASSES])
def test_every_config_key_is_accounted_for(arch, hf_class):
    recipe = architectures()[arch].recipe_obj
    defaults = _config_class(hf_class)().to_dict()
    missing = config_audit.unaccounted_hf(recipe, set(defaults) - _BASE_KEYS)
    assert not missing, (f"{recipe.file}: {hf_class}'s config keys {missing} are neither read by an hparam, "
                         "nor listed in config.honours / config.inert / config.refuses")


@pytest.mark.parametrize("arch,hf_class", CLASSES, ids=[f"{a}-{c}" for a, c in CLASSES])
def test_refused_keys_accept_the_class_default(arch, hf_class):
    """A refusal names the value the recipe implements; the class's own default must be one of them."""
    recipe = architectures()[arch].recipe_obj
    defaults = _config_class(hf_class)().to_dict()
    for key, accepted in recipe.config["refuses"].items():
        if key in defaults and defaults[key] is not None:
            options = accepted if isinstance(accepted, list) else [accepted]
            assert defaults[key] in options, f"{recipe.file}: refuses.{key} accepts {options}, {hf_class} defaults to {defaults[key]!r}"


def test_a_refused_value_is_a_clear_error(tmp_path):
    from rocmforge import load_model
    from rocmforge.testing.tiny import make_hf_model

    tiny = architectures()["llama"].recipe_obj.tiny[0]
    folder = make_hf_model(tiny["hf_class"], tiny["config"], tmp_path / "m", seed=0)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mlp_bias"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"mlp_bias = True is not supported by the llama recipe"):
        load_model(str(folder), tokenizer=False)


def test_unknown_keys_are_listed():
    recipe = architectures()["llama"].recipe_obj
    assert config_audit.unaccounted_hf(recipe, {"hidden_size", "a_new_knob"}) == ["a_new_knob"]
    assert config_audit.unaccounted_gguf(recipe, "llama", {"llama.block_count", "llama.new_knob", "general.name"}) \
        == ["llama.new_knob"]
