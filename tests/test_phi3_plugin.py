"""The separately installable rocmforge-phi3 plugin: conformance from source, and a real install.

Entry points are off under pytest, so a module fixture registers the plugin from its source
folder (plugins/rocmforge-phi3) and unregisters it afterwards. The slow test installs the
distribution into a fresh venv and checks that ``rocmforge list-archs`` finds it through its
entry point, and that ROCMFORGE_PLUGINS="" leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from rocmforge.plugin_manager import register_plugin, unregister_plugin
from rocmforge.registry import architectures
from rocmforge.testing.conformance import CHECKS, run_check

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "rocmforge-phi3"
RECIPE = PLUGIN_DIR / "rocmforge_phi3" / "phi3.yaml"
TINY = [t["name"] for t in yaml.safe_load(RECIPE.read_text())["tiny"]]
CASES = [(m, c) for m in TINY for c in CHECKS]


@pytest.fixture(scope="module")
def phi3_plugin():
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        import rocmforge_phi3

        register_plugin(rocmforge_phi3, name="rocmforge-phi3", distribution="rocmforge-phi3",
                        version=rocmforge_phi3.__version__)
        try:
            yield rocmforge_phi3
        finally:
            unregister_plugin("rocmforge-phi3")
    finally:
        sys.path.remove(str(PLUGIN_DIR))
        sys.modules.pop("rocmforge_phi3", None)


def test_registered_from_its_distribution(phi3_plugin):
    spec = architectures()["phi3"]
    assert spec.source.distribution == "rocmforge-phi3"
    assert spec.gguf_archs == ["phi3"] and spec.hf_classes == ["Phi3ForCausalLM"]


def test_config_audit(phi3_plugin):
    """Every Phi3Config key is honoured, inert or refused (as for the built-in families)."""
    transformers = pytest.importorskip("transformers")
    from rocmforge.config_audit import unaccounted_hf

    keys = set(transformers.Phi3Config().to_dict()) - set(transformers.PretrainedConfig().to_dict())
    assert unaccounted_hf(architectures()["phi3"].recipe_obj, keys) == []


def test_not_builtin():
    import importlib

    from rocmforge.plugin_manager import builtin_plugins

    names: list[str] = []
    for mod in builtin_plugins():
        importlib.import_module(f"rocmforge.plugins.{mod}").register_architectures(register=lambda s: names.append(s.name))
    assert "phi3" not in names


@pytest.mark.parametrize("model,check", CASES, ids=[f"phi3-{m}-{c}" for m, c in CASES])
def test_phi3_conformance(phi3_plugin, model, check, tmp_path_factory):
    if check == "transformers":
        pytest.importorskip("transformers")
    r = run_check("phi3", model, check, tmp_path_factory.mktemp(f"phi3-{model}"))
    if r.status == "skip":
        pytest.skip(r.detail)
    assert r.status == "pass", r.detail


def _list_archs(python: Path, cwd: Path, **env_extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROCMFORGE_PLUGINS", "PYTHONPATH")}
    env.update(env_extra)
    out = subprocess.run([str(python), "-m", "rocmforge.cli.main", "list-archs", "--json"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return [a["name"] for a in json.loads(out.stdout)]


@pytest.mark.slow
def test_installed_into_fresh_venv(tmp_path):
    """pip install of the plugin folder into a new venv; found only through its entry point."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    # rocmforge and its dependencies come from the running environment (no network): a .pth
    # line adds its site-packages as a site dir, after the venv's own. rocmforge-phi3 is not
    # installed there (asserted below), so the venv sees it only by installing it.
    pure = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    Path(pure, "zz_parent_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parent))
    assert "phi3" not in _list_archs(python, tmp_path), "phi3 visible before installing the plugin"

    # Build the wheel with this environment's setuptools (the venv's bundled one may be too old),
    # then install it with the venv's own pip.
    src = tmp_path / "src"
    shutil.copytree(PLUGIN_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(dist), str(src)], check=True, timeout=180, cwd=tmp_path)
    wheel = next(dist.glob("rocmforge_phi3-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=180, cwd=tmp_path)
    assert "phi3" in _list_archs(python, tmp_path)
    assert "phi3" not in _list_archs(python, tmp_path, ROCMFORGE_PLUGINS="")
    assert "phi3" in _list_archs(python, tmp_path, ROCMFORGE_PLUGINS="rocmforge-phi3")
