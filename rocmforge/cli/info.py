"""``rocmforge info MODEL``: what a model file is, as rocmforge sees it."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show a model's architecture, hparams, quant mix and tensor-map coverage",
                       description="Detect the architecture of a GGUF file or HF folder from its metadata and show "
                                   "the providing plugin, hyperparameters, tensor count, quant mix, parameter "
                                   "count, file size and tensor-map coverage. Nothing is dequantised.")
    p.add_argument("model", metavar="MODEL", help="a .gguf file, an HF folder, or an installed model's short name")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def collect(model) -> dict:
    from ..tensor_map import file_names

    used = set().union(*(file_names(t) for t in model.tensors.values())) if model.tensors else set()
    spec = model.spec
    tok = model.tokenizer
    return {
        "path": model.path,
        "format": model.file_format,
        "arch": model.arch,
        "plugin": str(spec.source) if spec.source else None,
        "recipe": str(spec.recipe),
        "tensor_map": str(spec.tensor_map),
        "hparams": model.hparams,
        "file_size": model.file_size,
        "n_tensors": model.n_file_tensors,
        "n_params": model.n_params(),
        "quant_mix": model.quant_mix(),
        "kv_cache": {"dtype": model.kv_cache_dtype, "scales": model.kv_scales},
        # what `run` / `chat` / `bench` on the CPU compute with (the weights are not read for this)
        "backend": {"name": model.backend.name, "device": model.backend.device,
                    "kernels": model.backend.describe() if hasattr(model.backend, "describe") else None},
        "quark_layers": model.quark_layers,
        "coverage": {"mapped": len(used), "ignored": model.n_file_tensors - len(used), "unmapped": 0,
                     "canonical": len(model.tensors),
                     "tied": sorted(n for n, t in model.tensors.items()
                                    if sum(t is u for u in model.tensors.values()) > 1)},
        "tokenizer": None if tok is None else {"vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                                               "eos_ids": sorted(tok.eos_ids),
                                               "chat_template": tok.chat_template is not None},
    }


def run(args) -> int:
    from ..model import load_model

    model = load_model(args.model)
    info = collect(model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['path']}")
    print(f"  format       {info['format']}, {info['file_size'] / 2**20:.1f} MiB")
    print(f"  architecture {info['arch']} (plugin {info['plugin']})")
    print(f"  parameters   {info['n_params'] / 1e6:.1f} M in {info['n_tensors']} tensors")
    print(f"  quant mix    {', '.join(f'{k} x{v}' for k, v in info['quant_mix'].items())}")
    cov = info["coverage"]
    print(f"  tensor map   {cov['mapped']} file tensors mapped to {cov['canonical']} canonical ones, "
          f"{cov['ignored']} ignored, 0 unmapped"
          + (f"; tied: {', '.join(cov['tied'])}" if cov["tied"] else ""))
    if info["tokenizer"]:
        t = info["tokenizer"]
        print(f"  tokenizer    {t['vocab_size']} tokens, bos {t['bos_id']}, eos {t['eos_ids']}, "
              f"chat template: {'yes' if t['chat_template'] else 'no'}")
    else:
        print("  tokenizer    none")
    if info["quark_layers"]:
        print("  Quark layers (weight | input activations)")
        for name, f in info["quark_layers"].items():
            print(f"    {name:40s} {f['weight']:32s} | {f['input']}")
    scales = info["kv_cache"]["scales"]
    be = info["backend"]
    print(f"  backend      {be['name']} ({be['device']}): "
          + (be["kernels"] or "the NumPy float32 reference (dequantised weights)"))
    print(f"  KV cache     {info['kv_cache']['dtype']}"
          + (f", FP8 scales (k, v) per layer from the file: {scales}" if scales else ""))
    print("  hparams")
    for k, v in info["hparams"].items():
        print(f"    {k:24s} {v}")
    return 0
