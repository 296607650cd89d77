"""rocmforge plugin: Microsoft Phi-3 (fused QKV and gate|up, NeoX rope, partial rotary).

Installed as its own distribution; rocmforge loads it through the ``rocmforge`` entry point
group. The recipe and tensor map are package data read with importlib.resources.
"""

from importlib import resources

from rocmforge.hookspecs import hookimpl
from rocmforge.registry import ArchSpec

__version__ = "0.1.0"

_DATA = resources.files(__name__)


@hookimpl
def register_architectures(register):
    register(ArchSpec("phi3", _DATA.joinpath("phi3.yaml"), _DATA.joinpath("phi3_map.yaml"),
                      description="Microsoft Phi-3, Phi-3.5-mini, Phi-4-mini"))
