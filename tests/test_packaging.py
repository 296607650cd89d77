"""The wheel: its contents, and a fresh venv that runs the installed ``rocmforge`` with a real plugin.

Slow (builds wheels, makes a venv). No network: the build runs without
isolation and the venv borrows this environment's dependencies through a
plain path entry (so the editable checkout of rocmforge is *not* visible)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

import rocmforge

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", ".ci-venv", ".whl",
                                ".pytest_cache", ".ruff_cache", ".hypothesis")


def _run(cmd, cwd, env=None, timeout=300):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _build_wheel(src: Path, out: Path) -> Path:
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", out, src], cwd=src)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)   # a clean tree, as from a fresh clone
    return _build_wheel(src, tmp / "dist")


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    py = venv / "bin" / "python"
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent)
    site = Path(purelib.stdout.strip())
    # dependencies (numpy, gguf, tokenizers, ...) from this environment, appended after the venv's own
    # site-packages; a plain path line does not run that folder's .pth files, so the editable
    # rocmforge of this checkout stays invisible
    (site / "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--force-reinstall",
          "--quiet", wheel], cwd=venv.parent)
    return venv


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("rocmforge/__init__.py", "rocmforge/hookspecs.py", "rocmforge/cli/main.py",
                 "rocmforge/plugins/__init__.py", "rocmforge/plugins/llama.py",
                 "rocmforge/architectures/__init__.py", "rocmforge/architectures/llama.yaml",
                 "rocmforge/mappings/__init__.py", "rocmforge/mappings/llama.yaml",
                 "rocmforge/kernels/__init__.py"):
        assert must in names, f"{must} missing from {wheel.name}"
    # every shipped YAML, plugin module and kernel source is in the wheel
    for folder, pattern in (("architectures", "*.yaml"), ("mappings", "*.yaml"), ("plugins", "*.py"),
                            ("kernels", "*.hip"), ("kernels", "*.h")):
        for f in (REPO / folder).glob(pattern):
            assert f"rocmforge/{folder}/{f.name}" in names, f"{folder}/{f.name} missing from {wheel.name}"
    assert not any(n.startswith(("tests/", "plugins/", "architectures/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rocmforge = rocmforge.cli.main:main" in zipfile.ZipFile(wheel).read(meta).decode()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ROCMFORGE_PLUGINS", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def test_installed_wheel_runs_outside_the_repo(venv, tmp_path):
    py = venv / "bin" / "python"
    where = _run([py, "-c", "import rocmforge; print(rocmforge.__file__, rocmforge.__version__)"], cwd=tmp_path,
                 env=_env())
    path, version = where.stdout.split()
    assert Path(path).resolve().is_relative_to(venv.resolve()), f"rocmforge imported from {path}, not the venv"
    assert version == rocmforge.__version__
    res = _run([venv / "bin" / "rocmforge", "list-archs", "--json"], cwd=tmp_path, env=_env())
    archs = {a["name"]: a for a in json.loads(res.stdout)}
    assert "llama" in archs
    assert Path(archs["llama"]["recipe"]).resolve().is_relative_to(venv.resolve())
    assert archs["llama"]["distribution"] == "rocmforge"


PLUGIN_PY = '''
from importlib import resources

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import ArchSpec


@hookimpl
def register_architectures(register):
    here = resources.files("rocmforge_toyarch")
    register(ArchSpec("toyarch", here / "recipe.yaml", here / "map.yaml", "a toy plugin architecture"))
'''

PLUGIN_RECIPE = '''
name: toyarch
detect: {gguf: [toyarch], hf: [ToyArchForCausalLM]}
hparams:
  n_layer: {gguf: "{arch}.block_count", hf: num_hidden_layers, type: int}
embed:
  - {op: embedding, weight: token_embd, out: x}
block:
  - {op: rms_norm, in: x, weight: attn_norm, out: x}
head:
  - {op: output, in: x, weight: token_embd, out: logits}
'''

PLUGIN_PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "rocmforge-toyarch"
version = "0.4.2"
dependencies = ["rocmforge"]

[project.entry-points.rocmforge]
toyarch = "rocmforge_toyarch"

[tool.setuptools]
packages = ["rocmforge_toyarch"]

[tool.setuptools.package-data]
rocmforge_toyarch = ["*.yaml"]
'''


def test_a_plugin_distribution_installed_in_the_venv_is_listed(venv, tmp_path):
    src = tmp_path / "rocmforge-toyarch"
    pkg = src / "rocmforge_toyarch"
    pkg.mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent(PLUGIN_PYPROJECT))
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN_PY))
    (pkg / "recipe.yaml").write_text(PLUGIN_RECIPE)
    (pkg / "map.yaml").write_text("tensors:\n  token_embd: {hf: model.embed_tokens.weight}\n"
                                  "  blk.{i}.attn_norm: {hf: 'model.layers.{i}.input_layernorm.weight'}\n")
    whl = _build_wheel(src, tmp_path / "dist")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
          "--quiet", whl], cwd=tmp_path)
    cli = venv / "bin" / "rocmforge"
    try:
        archs = {a["name"]: a for a in json.loads(_run([cli, "list-archs", "--json"], tmp_path, _env()).stdout)}
        toy = archs["toyarch"]
        assert toy["distribution"] == "rocmforge-toyarch" and toy["version"] == "0.4.2"
        assert toy["plugin"] == "toyarch" and toy["gguf_archs"] == ["toyarch"]
        assert "llama" in archs
        # the allowlist: by distribution name, by entry-point name, and "" = built-ins only
        for allow, listed in (("rocmforge-toyarch", True), ("toyarch", True), ("ROCMFORGE_TOYARCH", True),
                              ("", False), ("someother", False)):
            out = _run([cli, "list-archs", "--json"], tmp_path, _env(ROCMFORGE_PLUGINS=allow)).stdout
            names = {a["name"] for a in json.loads(out)}
            assert ("toyarch" in names) is listed, (allow, names)
            assert "llama" in names
    finally:
        _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "uninstall", "-y", "--quiet",
              "rocmforge-toyarch"], cwd=tmp_path)
