import pytest


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2-135M (the tokenizer and chat template are all the in-process tests use of it)."""
    from models import SMOLLM2_DIST, installed

    if not installed(SMOLLM2_DIST):
        pytest.skip(f"{SMOLLM2_DIST} not installed")
    import rocmforge

    return rocmforge.load_model("smollm2")
