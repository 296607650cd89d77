"""The quant registry names a format's GPU kernels once; those kernels exist in kernels/ (no GPU needed)."""

import re
from importlib.resources import files

import pytest

from rocmforge.quant import formats

SOURCES = "".join(files("rocmforge.kernels").joinpath(n).read_text()
                  for n in ("rf_quant.h", "dequant.hip", "matvec.hip"))
LISTS = dict(re.findall(r"#define (RF_FOR_EACH_\w+_FORMAT)\(X\)((?:.*\\\n)*.*)", SOURCES))
INSTANTIATED = {
    "matvec": set(re.findall(r"X\((\w+)\)", " ".join(LISTS[k] for k in ("RF_FOR_EACH_BLOCK_FORMAT",
                                                                      "RF_FOR_EACH_MX_INT_FORMAT",
                                                                      "RF_FOR_EACH_FLOAT_GROUP_FORMAT")))),
    "dequant": set(re.findall(r"X\((\w+)\)", LISTS["RF_FOR_EACH_BLOCK_FORMAT"] + LISTS["RF_FOR_EACH_MX_FORMAT"])),
}
PLAIN = set(re.findall(r"__global__ void (matvec_\w+|dequant_plain)\(", SOURCES))

WITH_KERNELS = [f for f in formats().values() if f.matvec_kernel]


def test_the_formats_users_meet_have_gpu_kernels():
    have = {f.name for f in WITH_KERNELS}
    needed = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
              "IQ4_NL", "IQ4_XS", "MXFP4", "MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2", "MXFP6_E2M3", "MXFP4_E2M1",
              "MXINT8"}
    assert needed <= have, sorted(needed - have)


@pytest.mark.parametrize("fmt", WITH_KERNELS, ids=[f.name for f in WITH_KERNELS])
def test_named_kernels_exist_in_the_sources(fmt):
    for kernel, family in ((fmt.matvec_kernel, "matvec"), (fmt.dequant_kernel, "dequant")):
        suffix = kernel.split("_", 1)[1]
        assert kernel in PLAIN or suffix in INSTANTIATED[family], f"{fmt.name}: no {kernel} in kernels/"


def test_backend_tables_come_from_the_registry():
    cb = pytest.importorskip("rocmforge.backends.cupy_backend")   # importing it never loads CuPy
    for name, suffix in {**cb.BLOCK_KERNELS, **cb.FGROUP_KERNELS}.items():
        assert formats()[name].matvec_kernel == f"matvec_{suffix}"
