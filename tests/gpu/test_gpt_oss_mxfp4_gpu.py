"""gpt-oss MXFP4 expert checkpoints on the GPU: the experts stay MXFP4 in GPU memory, logits equal the CPU's.

The folder comes from ROCMFORGE_GPT_OSS_MXFP4 (built beforehand with
``python -m tests.gpu.test_gpt_oss_mxfp4_gpu DIR`` where transformers is installed), or is
built here by the CPU test's fixture when transformers is available.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rocmforge.testing.conformance import NMSE_GPU, PROMPT, nmse

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def mxfp4_folder(tmp_path_factory):
    env = os.environ.get("ROCMFORGE_GPT_OSS_MXFP4")
    if env:
        return Path(env)
    pytest.importorskip("transformers")
    return build(tmp_path_factory.mktemp("gpt_oss_mxfp4_gpu"))


def build(root: Path) -> Path:
    """Write the CPU test's MXFP4 folder under ``root`` and return it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.test_gpt_oss_mxfp4 import folders

    gen = folders.__wrapped__(_Factory(root))
    return next(gen)["mxfp4"]


class _Factory:
    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def test_experts_stay_mxfp4_on_the_gpu(mxfp4_folder):
    from rocmforge.backends.cupy_backend import GpuWeight
    from rocmforge.model import load_model

    m = load_model(str(mxfp4_folder), device="gpu", tokenizer=False)
    w = m.executor.weight("blk.0.ffn_gate_exps")
    assert isinstance(w, GpuWeight) and w.qtype == "MXFP4_E2M1", (type(w).__name__, getattr(w, "qtype", None))


def test_mxfp4_gpu_equals_cpu(mxfp4_folder):
    from rocmforge.model import load_model

    prompt = [p % 256 for p in PROMPT]
    ref = load_model(str(mxfp4_folder), device="numpy", tokenizer=False).logits(prompt)
    got = load_model(str(mxfp4_folder), device="gpu", tokenizer=False).logits(prompt)
    e = nmse(got, ref)
    assert e <= NMSE_GPU, f"gpt-oss MXFP4 GPU vs CPU: NMSE {e:.3g}"


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
