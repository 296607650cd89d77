"""Tiny random models for the engine tests, built once per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch, name) -> a loaded rocmforge Model of that architecture's tiny test model."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import rocmforge
    from rocmforge.registry import architectures
    from rocmforge.testing.tiny import make_hf_model

    built = {}

    def make(arch: str, name: str, device: str = "cpu"):
        if (name, device) not in built:
            t = next(t for t in architectures()[arch].recipe_obj.tiny if t["name"] == name)
            folder = tmp_path_factory.mktemp(name)
            make_hf_model(t["hf_class"], t["config"], folder, seed=3)
            built[name, device] = rocmforge.load_model(str(folder), device=device, tokenizer=False)
        return built[name, device]

    return make
