"""The plugin host: throwaway plugins registered through the same hooks as the built-ins."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

import rocmforge
from rocmforge import plugin_manager, registry
from rocmforge.errors import PluginError, UnknownArchitectureError
from rocmforge.hookspecs import hookimpl
from rocmforge.plugin_manager import _allowed, register_plugin, unregister_plugin
from rocmforge.registry import ArchSpec

RECIPE = """\
name: {name}
description: a toy architecture
detect: {{gguf: [{gguf}], hf: [{hf}]}}
hparams:
  n_layer: {{gguf: "{{arch}}.block_count", hf: num_hidden_layers, type: int}}
embed:
  - {{op: embedding, weight: token_embd, out: x}}
block:
  - {{op: {block_op}, in: x, out: x}}
head:
  - {{op: output, in: x, weight: token_embd, out: logits}}
"""

MAP = """\
tensors:
  token_embd: {hf: model.embed_tokens.weight}
"""


def write_arch(tmp_path, name, gguf=None, hf=None, block_op="scale_by_two"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    recipe, tmap = d / "recipe.yaml", d / "map.yaml"
    recipe.write_text(RECIPE.format(name=name, gguf=gguf or f"{name}_gguf", hf=hf or f"{name.title()}ForCausalLM",
                                    block_op=block_op))
    tmap.write_text(MAP)
    return recipe, tmap


class ArchPlugin:
    def __init__(self, *specs):
        self.specs = specs

    @hookimpl
    def register_architectures(self, register):
        for spec in self.specs:
            register(spec)


@contextlib.contextmanager
def plugged(plugin, name, distribution="rocmforge-toy", version="1.2.3"):
    register_plugin(plugin, name, distribution=distribution, version=version)
    try:
        yield plugin
    finally:
        unregister_plugin(name)


def test_builtin_llama_is_registered_as_a_plugin():
    archs = {a["name"]: a for a in rocmforge.list_architectures()}
    assert "llama" in archs
    llama = archs["llama"]
    assert "llama" in llama["gguf_archs"]
    assert "LlamaForCausalLM" in llama["hf_classes"]
    assert llama["distribution"] == "rocmforge" and llama["version"] == rocmforge.__version__
    assert llama["plugin"] == "rocmforge.llama"


def test_throwaway_plugin_is_listed_with_its_distribution(tmp_path):
    recipe, tmap = write_arch(tmp_path, "toyarch")
    with plugged(ArchPlugin(ArchSpec("toyarch", recipe, tmap, "toy")), "toy-plugin"):
        archs = {a["name"]: a for a in rocmforge.list_architectures()}
        toy = archs["toyarch"]
        assert toy["plugin"] == "toy-plugin"
        assert toy["distribution"] == "rocmforge-toy"
        assert toy["version"] == "1.2.3"
        assert toy["gguf_archs"] == ["toyarch_gguf"]
        assert toy["hf_classes"] == ["ToyarchForCausalLM"]
        assert toy["recipe"] == str(recipe) and toy["tensor_map"] == str(tmap)
        assert "llama" in archs  # the built-ins are still there
        assert registry.by_gguf_arch("toyarch_gguf").name == "toyarch"
        assert registry.by_hf_class(["ToyarchForCausalLM"]).name == "toyarch"
    assert "toyarch" not in {a["name"] for a in rocmforge.list_architectures()}


def test_two_plugins_claiming_one_name_is_an_error_naming_both(tmp_path):
    r1, m1 = write_arch(tmp_path, "dup", gguf="dup_a", hf="DupA")
    with plugged(ArchPlugin(ArchSpec("dup", r1, m1)), "first-plugin", distribution="rocmforge-first"), \
            plugged(ArchPlugin(ArchSpec("dup", r1, m1)), "second-plugin", distribution="rocmforge-second"):
        with pytest.raises(PluginError) as exc:
            rocmforge.list_architectures()
        msg = str(exc.value)
        assert "'dup'" in msg
        assert "rocmforge-first" in msg and "rocmforge-second" in msg
        assert "first-plugin" in msg and "second-plugin" in msg
    # once one is gone, the registry works again
    assert "llama" in {a["name"] for a in rocmforge.list_architectures()}


def test_plugin_claiming_a_builtin_name_is_an_error(tmp_path):
    r, m = write_arch(tmp_path, "llama", gguf="other", hf="OtherForCausalLM")
    with plugged(ArchPlugin(ArchSpec("llama", r, m)), "shadow", distribution="rocmforge-shadow"):
        with pytest.raises(PluginError) as exc:
            registry.architectures()
        assert "rocmforge-shadow" in str(exc.value) and "rocmforge.llama" in str(exc.value)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_same_detection_id_under_two_names_is_an_error(tmp_path, kind):
    same = {"gguf": "shared_gguf"} if kind == "gguf" else {"hf": "SharedForCausalLM"}
    r1, m1 = write_arch(tmp_path, "alpha", **same)
    r2, m2 = write_arch(tmp_path, "beta", **same)
    with plugged(ArchPlugin(ArchSpec("alpha", r1, m1)), "alpha-plugin", distribution="rocmforge-alpha"), \
            plugged(ArchPlugin(ArchSpec("beta", r2, m2)), "beta-plugin", distribution="rocmforge-beta"):
        with pytest.raises(PluginError) as exc:
            registry.architectures()
        msg = str(exc.value)
        assert next(iter(same.values())) in msg
        assert "rocmforge-alpha" in msg and "rocmforge-beta" in msg


def test_claiming_llama_gguf_id_is_an_error(tmp_path):
    r, m = write_arch(tmp_path, "myllama", gguf="llama")
    with plugged(ArchPlugin(ArchSpec("myllama", r, m)), "myllama-plugin"), \
            pytest.raises(PluginError, match="GGUF arch 'llama'"):
        registry.architectures()


def test_register_wants_an_archspec():
    with plugged(ArchPlugin({"name": "nope"}), "sloppy"), pytest.raises(PluginError, match="expected an ArchSpec"):
        registry.architectures()


def test_plugin_with_a_broken_recipe_fails_with_a_schema_error(tmp_path):
    from rocmforge.errors import SchemaError

    r, m = write_arch(tmp_path, "broken")
    r.write_text(r.read_text().replace("name: broken\n", ""))
    with plugged(ArchPlugin(ArchSpec("broken", r, m)), "broken-plugin"):
        with pytest.raises(SchemaError) as exc:
            registry.architectures()
        assert str(r) in str(exc.value) and "'name'" in str(exc.value)


def test_unknown_architecture_lists_the_registered_ones():
    with pytest.raises(UnknownArchitectureError) as exc:
        registry.get("llamma")
    assert "llama" in str(exc.value)
    with pytest.raises(UnknownArchitectureError) as exc:
        registry.by_gguf_arch("nosucharch")
    assert "nosucharch" in str(exc.value) and "llama" in str(exc.value)
    with pytest.raises(UnknownArchitectureError) as exc:
        registry.by_hf_class(["NoSuchForCausalLM"], "nosuch")
    assert "NoSuchForCausalLM" in str(exc.value) and "LlamaForCausalLM" in str(exc.value)


# ---------------------------------------------------------------- ops

def _scale_by_two(ctx, step):
    ctx.set(step["out"], ctx.backend.scale(ctx.get(step["in"]), 2.0))


class OpsPlugin:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    @hookimpl
    def register_ops(self, register):
        register(self.name, self.fn)


def test_register_ops_adds_an_op_a_recipe_can_run(tmp_path):
    from rocmforge.backends.numpy_backend import NumpyBackend
    from rocmforge.ops import all_ops
    from rocmforge.recipe import Executor

    recipe_path, map_path = write_arch(tmp_path, "opsarch")
    spec = ArchSpec("opsarch", recipe_path, map_path)
    emb = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    raw = SimpleNamespace(dequantize=lambda: emb, qtype="F32", shape=emb.shape)
    hp = {"n_layer": 2, "vocab_size": 4}

    from rocmforge.errors import SchemaError

    with pytest.raises(SchemaError, match="scale_by_two"):   # not known without the plugin
        Executor(spec.recipe_obj, hp, lambda name: raw, NumpyBackend())

    with plugged(OpsPlugin("scale_by_two", _scale_by_two), "ops-plugin"):
        assert "scale_by_two" in all_ops()
        ex = Executor(spec.recipe_obj, hp, lambda name: raw, NumpyBackend())
        ids = [1, 3]
        logits = ex.forward(ids, ex.backend.new_kv_cache(2, 1, 4, 4, 8), 0)
        # two blocks each double x; the head projects on token_embd
        np.testing.assert_allclose(logits, (4 * emb[ids]) @ emb.T, rtol=1e-6)
    assert "scale_by_two" not in all_ops()


def test_register_ops_cannot_replace_a_builtin():
    from rocmforge.ops import all_ops

    with plugged(OpsPlugin("rms_norm", _scale_by_two), "hijack"), pytest.raises(PluginError, match="rms_norm"):
        all_ops()


# ---------------------------------------------------------------- commands

class CommandPlugin:
    @hookimpl
    def register_commands(self, cli):
        p = cli.add_parser("toy-hello", help="say hello")
        p.add_argument("--who", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.who}") or 3)


def test_register_commands_adds_a_subcommand(capsys):
    from rocmforge.cli.main import main

    with plugged(CommandPlugin(), "cmd-plugin"):
        assert main(["toy-hello", "--who", "tests"]) == 3
        assert capsys.readouterr().out.strip() == "hello tests"
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "toy-hello" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["toy-hello"])
    assert exc.value.code == 2


# ---------------------------------------------------------------- allowlist

@pytest.mark.parametrize("env, names, want", [
    (None, {"anything", "rocmforge-anything"}, True),
    ("", {"qwen", "rocmforge-qwen"}, False),
    ("qwen,phi", {"qwen", "rocmforge-qwen"}, True),
    ("qwen,phi", {"phi", "rocmforge-phi"}, True),
    ("qwen,phi", {"gemma", "rocmforge-gemma"}, False),
    ("rocmforge-qwen", {"qwen", "rocmforge-qwen"}, True),
    ("ROCMFORGE_QWEN", {"qwen", "rocmforge-qwen"}, True),
    (" Qwen , ", {"qwen", "rocmforge_qwen"}, True),
    ("qwe", {"qwen", "rocmforge-qwen"}, False),
    (",", {"qwen"}, False),
])
def test_allowlist(monkeypatch, env, names, want):
    if env is None:
        monkeypatch.delenv("ROCMFORGE_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("ROCMFORGE_PLUGINS", env)
    assert _allowed(names) is want


class _FakeEntryPoint:
    def __init__(self, name, dist, obj):
        self.name, self.dist, self._obj = name, SimpleNamespace(name=dist, version="9.9"), obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.mark.parametrize("env, want", [(None, {"ep-good"}), ("", set()), ("rocmforge-good", {"ep-good"}),
                                       ("other", set())])
def test_entry_points_respect_the_allowlist_and_survive_broken_plugins(monkeypatch, env, want):
    import importlib.metadata

    import pluggy

    from rocmforge import hookspecs

    eps = [_FakeEntryPoint("ep-good", "rocmforge-good", CommandPlugin()),
           _FakeEntryPoint("ep-broken", "rocmforge-broken", ImportError("boom"))]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == "rocmforge" else [])
    if env is None:
        monkeypatch.delenv("ROCMFORGE_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("ROCMFORGE_PLUGINS", env)
    pm = pluggy.PluginManager("rocmforge")
    pm.add_hookspecs(hookspecs)
    try:
        plugin_manager._load_entry_points(pm)
        assert {name for name, _ in pm.list_name_plugin()} == want
        if want:
            assert plugin_manager.source_of("ep-good").distribution == "rocmforge-good"
            assert plugin_manager.source_of("ep-good").version == "9.9"
    finally:
        plugin_manager._DIST_OF.pop("ep-good", None)


def test_entry_points_are_off_under_pytest():
    import sys

    assert getattr(sys, "_called_from_test", False)
    names = {name for name, _ in plugin_manager.get_plugin_manager().list_name_plugin()}
    assert names == {f"rocmforge.{n}" for n in plugin_manager.builtin_plugins()}
