"""Every file in the bad-file corpus gives one ModelFormatError, quickly and in little memory."""

from __future__ import annotations

import signal
import time
import tracemalloc

import pytest
from badfiles.cases import ALL_CASES, Case

from rocmforge.errors import ModelFormatError
from rocmforge.loaders.detect_format import open_model_file
from rocmforge.loaders.gguf import read_gguf
from rocmforge.loaders.hf import read_hf_folder

TIME_LIMIT_S = 5          # hard: a hang fails the test instead of hanging CI
SOFT_TIME_S = 2.0         # what a bad small file should actually take, generously
MEMORY_LIMIT = 64 << 20   # peak Python/NumPy allocations while loading


class Hang(Exception):
    pass


@pytest.fixture
def hard_timeout():
    def on_alarm(signum, frame):
        raise Hang(f"loader still running after {TIME_LIMIT_S}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _load_bounded(load, path) -> ModelFormatError:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFormatError) as info:
            load(path)
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < SOFT_TIME_S, f"took {elapsed:.2f}s"
    assert peak < MEMORY_LIMIT, f"peak allocation {peak >> 20} MiB"
    return info.value


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_bad_file(case: Case, tmp_path, hard_timeout):
    path = case.build(tmp_path)
    loader = read_gguf if case.kind == "gguf" else read_hf_folder
    err = _load_bounded(loader, path)
    msg = str(err)
    assert case.match.lower() in msg.lower(), msg
    assert path.name in msg or str(path) in msg, f"message does not name the file: {msg}"
    # The public entry point fails the same clean way (it may stop earlier, at detection).
    err = _load_bounded(open_model_file, path)
    assert path.name in str(err)


def test_invalid_utf8_string_value_is_replaced(tmp_path):
    from badfiles import gguf_layout, write_small_gguf

    p = write_small_gguf(tmp_path / "ok.gguf")
    data = bytearray(p.read_bytes())
    at = gguf_layout(bytes(data))["kv"]["general.name"]["value_at"] + 8   # "tiny"
    data[at:at + 2] = b"\xff\xfe"
    p.write_bytes(bytes(data))
    assert read_gguf(p).metadata["general.name"] == "\ufffd\ufffdny"


def test_metadata_caps(tmp_path, monkeypatch, hard_timeout):
    """A file may be valid yet ask for an absurd number of metadata objects: refuse it early."""
    from badfiles import write_small_gguf

    import rocmforge.loaders.gguf as mod

    p = write_small_gguf(tmp_path / "ok.gguf")
    monkeypatch.setattr(mod, "MAX_METADATA_STRINGS", 4)
    with pytest.raises(ModelFormatError, match="strings"):
        read_gguf(p)
    monkeypatch.setattr(mod, "MAX_METADATA_STRINGS", 1 << 22)
    monkeypatch.setattr(mod, "MAX_METADATA_ITEMS", 10)
    with pytest.raises(ModelFormatError, match="items"):
        read_gguf(p)
