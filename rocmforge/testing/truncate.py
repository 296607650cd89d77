"""Copy a GGUF keeping only its first N layers: a real model small enough to carry.

The lent GPU machine takes at most 64 MiB of files, and SmolLM2's GGUF is 94 MB;
its first layers with the embedding, tokenizer and head are a real model that
fits and still exercises every kernel the full one does.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def truncate_gguf(src: str | Path, dst: str | Path, n_layer: int) -> Path:
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        value = field.contents()
        if name == f"{arch}.block_count":
            value = n_layer
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    layer = re.compile(r"^blk\.(\d+)\.")
    for t in reader.tensors:
        m = layer.match(t.name)
        if m and int(m.group(1)) >= n_layer:
            continue
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        data = np.asarray(t.data)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(t.name, data)
        else:
            shape = tuple(int(s) for s in reversed(t.shape))
            writer.add_tensor(t.name, data, raw_shape=gguf.quant_shape_to_byte_shape(shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(dst)
