"""Decode tokens/s of a GGUF model on the GPU, eager launches vs graph replay (rocmforge bench's measure).

    # a random-weight LLaMA-2-7B-shaped Q4_0 file (~3.8 GB; write it on the GPU machine's disk)
    PYTHONPATH=. python3 benchmarks/gpu_decode_bench.py --make /tmp/llama7b-q4_0.gguf
    PYTHONPATH=. python3 benchmarks/gpu_decode_bench.py /tmp/llama7b-q4_0.gguf --prompt 16 --gen 128

``--make`` writes llama.cpp's Q4_0 mix: every matrix Q4_0 except output.weight (Q6_K), norms F32,
from random valid blocks (rocmforge.quant.samples.random_blocks) with the f16 block scales scaled
down to the size real 7B weights have. The benchmark loads the model once, then runs
``rocmforge bench``'s measure() with graphs off and on (same process, same card); each figure is the
median of --repeat runs, and a graph run includes its session's one capture.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_llama(path: str, n_layer=32, d=4096, ff=11008, n_head=32, n_kv=32, vocab=32000, ctx=4096,
               qtype="Q4_0", rope_base=10000.0, tokenizer=True):
    """Write a random-weight LLaMA GGUF: matrices ``qtype`` (Q4_0 or Q4_K), output.weight Q6_K, norms F32.

    Defaults are LLaMA-2-7B; LLaMA-3-8B is ff=14336, n_kv=8, vocab=128256, rope_base=5e5. With
    ``tokenizer`` the metadata holds a SentencePiece-style vocabulary (<unk>, <s>, </s>, 256 byte
    tokens, then filler pieces), which llama.cpp needs to load the file.
    """
    import gguf

    from rocmforge.quant import nbytes
    from rocmforge.quant.formats import get_format
    from rocmforge.quant.samples import random_blocks

    def blocks(qtype, shape, seed, scale):
        """Random valid blocks whose weights are about ``scale`` * 4 in size, like Q4_0's d * (q - 8)."""
        raw = random_blocks(qtype, shape, seed)
        fmt = get_format(qtype)
        rows = int(np.prod(shape[:-1]))
        b = raw.reshape(-1, fmt.type_size)
        rng = np.random.default_rng(seed + 1000)
        dsc = rng.uniform(0.5, 1.5, len(b)) * scale
        if qtype == "Q4_K":
            # value = d * sc * q - dmin * m; m = sc and dmin = 7.5 d centre it: d * sc * (q - 7.5)
            sc = b[:, 4:16]
            sc[:, 4:8] = sc[:, 0:4]                                # m_j = sc_j (6 low bits, j < 4)
            sc[:, 8:12] = (sc[:, 8:12] & 0x0F) * 0x11              # j >= 4: both nibbles of scales[j+4] equal
            dsc /= 31.5                                            # the mean 6-bit sub-scale
            b[:, 2:4] = (dsc * 7.5).astype("<f2").view(np.uint8).reshape(-1, 2)
        if qtype == "Q6_K":
            dsc /= 256.0                                           # mean |int8 sub-scale| 64 x mean |q - 32| 16 / 4
        off = {"Q4_0": 0, "Q4_K": 0, "Q6_K": 208}[qtype]
        b[:, off:off + 2] = dsc.astype("<f2").view(np.uint8).reshape(-1, 2)
        assert raw.size == nbytes(qtype, shape)
        return raw.reshape(rows, -1), gguf.GGMLQuantizationType[qtype]

    t0 = time.time()
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", n_layer)
    w.add_uint32("llama.context_length", ctx)
    w.add_uint32("llama.embedding_length", d)
    w.add_uint32("llama.feed_forward_length", ff)
    w.add_uint32("llama.attention.head_count", n_head)
    w.add_uint32("llama.attention.head_count_kv", n_kv)
    w.add_uint32("llama.rope.dimension_count", d // n_head)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", rope_base)
    w.add_uint32("llama.vocab_size", vocab)
    if tokenizer:
        add_spm_vocab(w, vocab)
    hd = d // n_head
    shapes = {"attn_q": (d, d), "attn_k": (n_kv * hd, d), "attn_v": (n_kv * hd, d), "attn_output": (d, d),
              "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
    # one random matrix per kind, shared by the layers (the bytes a decode step reads are the same)
    proto = {n: blocks(qtype, s, i, 0.002 if n != "ffn_down" else 0.001) for i, (n, s) in enumerate(shapes.items())}
    norm = np.ones(d, np.float32)
    emb = blocks(qtype, (vocab, d), 97, 0.004)
    w.add_tensor("token_embd.weight", emb[0], raw_shape=emb[0].shape, raw_dtype=emb[1])
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        for n in shapes:
            raw, qt = proto[n]
            w.add_tensor(f"blk.{i}.{n}.weight", raw, raw_shape=raw.shape, raw_dtype=qt)
    w.add_tensor("output_norm.weight", norm)
    out = blocks("Q6_K", (vocab, d), 98, 0.004)
    w.add_tensor("output.weight", out[0], raw_shape=out[0].shape, raw_dtype=out[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path}: {Path(path).stat().st_size / 1e9:.2f} GB in {time.time() - t0:.0f} s", flush=True)


def add_spm_vocab(w, vocab: int) -> None:
    """A SentencePiece ("llama") vocabulary of ``vocab`` pieces: <unk> <s> </s>, <0x00>..<0xFF>, filler."""
    import gguf

    n_byte = min(256, max(0, vocab - 3))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(n_byte)]
    tokens += [f"\u2581t{i}" for i in range(len(tokens), vocab)]
    T = gguf.TokenType
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * n_byte + [T.NORMAL] * (vocab - 3 - n_byte)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens[:vocab])
    w.add_token_scores([-float(i) for i in range(vocab)])
    w.add_token_types([int(t) for t in types[:vocab]])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def bench(path: str, n_prompt: int, n_gen: int, repeat: int, device: str = "gpu",
          modes=("eager", "graph", "eager", "graph"), configs=(None,)) -> dict:
    import rocmforge
    from rocmforge.backends.cupy_graph import DecodeGraph
    from rocmforge.cli.bench import measure

    t0 = time.time()
    model = rocmforge.load_model(path, device=device, tokenizer=False)
    model.prepare()
    model.backend.synchronize()
    print(f"loaded {model.arch} {path} ({model.quant_mix()}) in {time.time() - t0:.1f} s", flush=True)
    res = {"model": path, "arch": model.arch, "quant_mix": model.quant_mix()}
    try:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(0)
        res["card"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # noqa: BLE001
        pass
    runs = [(m, c) for c in configs for m in modes]
    for mode, cfg in runs:
        if cfg is not None:
            from gpu_ops import configure

            configure(model.backend, cfg)
            mode_key = f"{mode}:{cfg}"
        else:
            mode_key = mode
        model.backend.graphs = mode == "graph"
        r = measure(model, n_prompt, n_gen, repeat)
        # did the graph run replay? (one more session, a few steps)
        s = model.new_session(n_prompt + 8)
        s.feed(list(range(1, n_prompt + 1)))
        for t in range(4):
            s.feed([t + 5])
        state = getattr(s.cache, "graph", None)
        r["graph_state"] = (f"replays {state.replays}" if isinstance(state, DecodeGraph)
                            else getattr(state, "why", repr(state)))
        res.setdefault(mode_key, []).append(r)
        print(f"{mode_key:5s}: pp{n_prompt} {r['pp_tps']:8.1f} t/s   tg{n_gen} {r['tg_tps']:8.1f} t/s "
              f"(runs {', '.join(f'{x:.1f}' for x in r['tg_runs'])}; {r['graph_state']})", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--make", help="write a random LLaMA-2-7B-shaped Q4_0 GGUF here and exit")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--ff", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--kv-heads", type=int, help="KV heads (GQA; default --heads)")
    ap.add_argument("--qtype", default="Q4_0", choices=["Q4_0", "Q4_K"], help="--make's matrix type")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--json")
    ap.add_argument("--modes", default="eager,graph,eager,graph", help="comma list of eager / graph runs")
    ap.add_argument("--configs", help="comma list of gpu_ops.CONFIGS matvec configurations to compare")
    a = ap.parse_args()
    if a.make:
        make_llama(a.make, a.layers, a.dim, a.ff, a.heads, a.kv_heads or a.heads, a.vocab, qtype=a.qtype)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    res = bench(a.model, a.prompt, a.gen, a.repeat, a.device, tuple(a.modes.split(",")),
                tuple(a.configs.split(",")) if a.configs else (None,))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
