"""``rocmforge bench --profile`` without a GPU: the aggregation and tables on fake event timings,
the launch costs on fake arrays, the Profiler on a fake CuPy, and the CLI's answer on the CPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rocmforge.backends.cupy_profile import (
    GRAPHS_OFF_NOTE,
    Sample,
    StepProfile,
    aggregate,
    format_table,
    launch_cost,
    op_cost,
    profiling,
)
from rocmforge.cli.main import build_parser, main
from rocmforge.errors import RocmforgeError

NULL = np.uint64(0)


class Arr:
    """Stands in for a cupy array: what the cost functions read."""

    def __init__(self, *shape, itemsize=4):
        self.shape = shape
        self.size = int(np.prod(shape, dtype=np.int64))
        self.itemsize = itemsize
        self.nbytes = self.size * itemsize


# ------------------------------------------------------------------ aggregation and tables
SAMPLES = [Sample("matvec_q4_0", 0.30, 1_000_000, 2_000_000, 900_000),
           Sample("rms_norm_f32", 0.01, 8_000),
           Sample("matvec_q4_0", 0.50, 3_000_000, 6_000_000, 2_900_000),
           Sample("attn_decode", 0.10, 400_000, 800_000),
           Sample("rope_f32", 0.02, None, gap=True)]


def test_aggregate_sums_per_name_most_time_first():
    rows = aggregate(SAMPLES)
    assert [r.name for r in rows] == ["matvec_q4_0", "attn_decode", "rope_f32", "rms_norm_f32"]
    mv = rows[0]
    assert mv.calls == 2 and mv.ms == pytest.approx(0.80)
    assert mv.nbytes == 4_000_000 and mv.flops == 8_000_000 and mv.weight_bytes == 3_800_000
    assert mv.gbps == pytest.approx(4_000_000 / 0.8e-3 / 1e9)          # 5 GB/s
    assert mv.tflops == pytest.approx(8_000_000 / 0.8e-3 / 1e12)
    assert mv.avg_us == pytest.approx(400.0)
    rope = rows[2]
    assert rope.nbytes is None and rope.gbps is None and rope.gap_calls == 1
    assert rows[3].flops is None or rows[3].tflops is None


def test_aggregate_unknown_bytes_poison_the_row_sum():
    rows = aggregate([Sample("k", 1.0, 10), Sample("k", 1.0, None)])
    assert rows[0].nbytes is None and rows[0].calls == 2


def test_step_profile_totals_and_host_time():
    p = StepProfile("decode", 1, 16, SAMPLES, span_ms=1.0, wall_ms=30.0, eager_wall_ms=2.5)
    assert p.kernel_ms == pytest.approx(0.93)
    assert p.total_ms == pytest.approx(1.0)
    assert p.untracked_ms == pytest.approx(0.07)
    assert p.host_ms == pytest.approx(1.5)
    assert p.gap_calls == 1 and p.weight_bytes == 3_800_000
    d = p.to_dict()
    json.dumps(d)                                                      # JSON-ready
    assert d["graphs"] is False and d["launches"] == 5
    assert [k["name"] for k in d["kernels"]][0] == "matvec_q4_0"
    assert d["kernels"][0]["pct"] == pytest.approx(80.0)
    assert sum(k["pct"] for k in d["kernels"]) == pytest.approx(93.0)


def test_span_never_below_the_kernels_sum():
    p = StepProfile("prefill", 8, 0, [Sample("a", 2.0, 1)], span_ms=1.5)
    assert p.total_ms == 2.0 and p.untracked_ms == 0.0 and p.host_ms is None


def test_format_table():
    p = StepProfile("decode", 1, 16, SAMPLES, span_ms=1.0, wall_ms=30.0, eager_wall_ms=2.5)
    text = format_table(p)
    lines = text.splitlines()
    assert GRAPHS_OFF_NOTE in lines[0] and "decode" in lines[0] and "5 launches" in lines[0]
    assert lines[1].split()[:4] == ["kernel", "calls", "total", "ms"]
    body = [ln.split()[0] for ln in lines[2:6]]
    assert body == ["matvec_q4_0", "attn_decode", "rope_f32", "rms_norm_f32"]
    mv = lines[2].split()
    assert mv[1] == "2" and mv[2] == "0.800" and mv[3] == "80.0" and mv[5] == "5.0"
    assert lines[4].split()[-2:] == ["-", "-"]                          # rope: no bytes, no FLOPs
    assert "(between timed launches)" in text and "0.070" in text
    assert "host overhead 1.500 ms per token" in text
    assert "1 launch(es) were queued after the GPU had caught up" in text


# ------------------------------------------------------------------ launch costs
def test_matvec_block_cost_plain_and_moe():
    N, K, rb = 64, 256, 256 // 32 * 18             # Q4_0 rows
    w = Arr(N * rb, itemsize=1)
    xq, xd, xs, y = Arr(K // 4), Arr(K // 32), Arr(2 * K // 32), Arr(1, N)
    args = (w, np.int64(rb), xq, xd, xs, y, NULL, np.int32(N), np.int32(K), np.int32(1), NULL, np.int32(1),
            np.int64(N * rb))
    c = launch_cost("matvec_q4_0", args)
    assert c.weight_bytes == N * rb
    assert c.nbytes == N * rb + xq.nbytes + xd.nbytes + xs.nbytes + y.nbytes
    assert c.flops == 2 * N * K
    ids = Arr(4, itemsize=4)                       # MoE mode: 4 (token, expert) columns of an 8-expert weight
    w8 = Arr(8 * N * rb, itemsize=1)
    moe = (w8,) + args[1:10] + (ids,) + args[11:]
    c = launch_cost("matvec_q4_0", moe)
    assert c.weight_bytes == 4 * N * rb and c.flops == 4 * 2 * N * K


def test_matvec_float_and_fgroup_cost():
    N, K = 32, 64
    w, x, y = Arr(N, K, itemsize=2), Arr(2, K), Arr(2, N)
    c = launch_cost("matvec_f16", (w, x, y, NULL, np.int32(N), np.int32(K), np.int32(2), NULL, np.int32(1),
                                   np.int64(N * K)))
    assert c.weight_bytes == N * K * 2 and c.flops == 2 * 2 * N * K
    rb = 33
    wf = Arr(N * rb, itemsize=1)
    c = launch_cost("matvec_mx_fp8_e4m3", (wf, np.int64(rb), x, y, NULL, np.int32(N), np.int32(K), np.int32(2),
                                           NULL, np.int32(1), np.int64(N * rb)))
    assert c.weight_bytes == N * rb and c.flops == 2 * 2 * N * K


def test_dequant_cost_counts_the_rows_read():
    rows, out = Arr(3, itemsize=8), Arr(3, 64)
    c = launch_cost("dequant_q8_0", (Arr(1000 * 34, itemsize=1), np.int64(2 * 34), rows, np.int64(3),
                                     np.int32(64), out, NULL))
    assert c.weight_bytes == 3 * 2 * 34 and c.nbytes == 3 * 2 * 34 + rows.nbytes + out.nbytes
    c = launch_cost("dequant_plain", (Arr(1000, 64, itemsize=2), np.int32(1), NULL, np.int64(1000),
                                      np.int32(64), NULL, Arr(1000, 64, itemsize=2)))
    assert c.weight_bytes == 1000 * 64 * 2


def test_attention_costs():
    T, H, Hkv, Dk, Dv, pos0 = 1, 8, 2, 64, 64, 99
    q, kc, vc, out = Arr(T, H, Dk), Arr(512, Hkv, Dk, itemsize=2), Arr(512, Hkv, Dv, itemsize=2), Arr(T, H, Dv)
    scal = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(Dk), np.int32(Dv), np.int32(pos0), np.int32(0),
            np.float32(0.1), np.float32(0.0))
    c = launch_cost("attn_decode", (q, kc, vc, out, NULL, NULL) + scal + (np.int32(4), NULL, np.int32(0), NULL, NULL))
    assert c.flops == 2 * H * (Dk + Dv) * 100
    assert c.nbytes == 100 * Hkv * (Dk + Dv) * 2 + q.nbytes + out.nbytes
    T = 16
    scal = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(Dk), np.int32(Dv), np.int32(0), np.int32(4),
            np.float32(0.1), np.float32(0.0))
    c = launch_cost("attn_prefill", (q, kc, vc, out) + scal + (np.int32(0), NULL, NULL))
    pairs = 1 + 2 + 3 + 4 * 13                      # causal, window 4
    assert c.flops == 2 * H * (Dk + Dv) * pairs


def test_kv_store_and_generic_costs():
    k, v, kc = Arr(1, 2, 64), Arr(1, 2, 64), Arr(512, 2, 64, itemsize=2)
    c = launch_cost("kv_store", (k, v, kc, kc, np.int64(128), np.int64(128), np.int64(5)))
    assert c.nbytes == k.nbytes + v.nbytes + 256 * 2
    x, y = Arr(4, 64), Arr(4, 64)
    assert launch_cost("rms_norm_f32", (x, NULL, y, np.int32(64), np.float32(1e-5))).nbytes == 2 * x.nbytes


def test_an_unexpected_layout_gives_no_figure():
    assert launch_cost("matvec_q4_0", (Arr(10),)) is None
    assert launch_cost("attn_decode", (Arr(1), Arr(1))) is None


def test_op_cost_of_a_matmul_and_a_cast():
    matmul = object()
    x, w, out = Arr(16, 64), Arr(64, 32), Arr(16, 32)
    c = op_cost(matmul, (x, w), out, matmul=True)
    assert c.flops == 2 * 16 * 32 * 64 and c.nbytes == x.nbytes + w.nbytes + out.nbytes
    c = op_cost(matmul, (Arr(4, 16, 64), Arr(4, 64, 8)), Arr(4, 16, 8), matmul=True)
    assert c.flops == 2 * 4 * 16 * 8 * 64
    bound = SimpleNamespace(__self__=x)            # x.astype: the owner array is read
    assert op_cost(bound, (np.float16,), Arr(16, 64, itemsize=2), matmul=False).nbytes == x.nbytes + 16 * 64 * 2
    assert op_cost(matmul, ([Arr(2, 8), Arr(3, 8)],), Arr(5, 8), matmul=False).nbytes == 2 * 5 * 8 * 4


# ------------------------------------------------------------------ the profiler on a fake CuPy
class FakeClock:
    def __init__(self):
        self.t = 0.0


def fake_cp(clock: FakeClock):
    class Event:
        def __init__(self):
            self.t = None

        def record(self):
            clock.t += 0.001                        # 1 us to record
            self.t = clock.t

        @property
        def done(self):
            return False                            # the GPU is always behind: no gaps

    def get_elapsed_time(a, b):
        return b.t - a.t

    stream = SimpleNamespace(synchronize=lambda: None)
    cuda = SimpleNamespace(Event=Event, get_elapsed_time=get_elapsed_time, get_current_stream=lambda: stream)
    return SimpleNamespace(cuda=cuda, matmul=lambda a, b: Arr(a.shape[0], b.shape[1]))


def test_profiler_records_launches_and_ops():
    clock = FakeClock()
    cp = fake_cp(clock)

    def kernel(grid, block, args, shared_mem=0):
        clock.t += 0.5

    backend = SimpleNamespace(device="gpu", cp=cp, _prof=None, graphs=True)
    with profiling(backend) as prof:
        assert backend._prof is prof and backend.graphs is False
        prof.arm(0)
        x, y = Arr(4, 64), Arr(4, 64)
        prof.launch("rms_norm_f32", kernel, (4,), (256,), (x, NULL, y, np.int32(64), np.float32(1e-5)))
        out = prof.op("cublas_gemm_f32", cp.matmul, (Arr(16, 64), Arr(64, 32)), {})
        samples = prof.samples()
        span = prof.span_ms()
    assert backend._prof is None and backend.graphs is True
    assert out.shape == (16, 32)
    assert [s.name for s in samples] == ["rms_norm_f32", "cublas_gemm_f32"]
    assert samples[0].ms == pytest.approx(0.501) and samples[1].ms == pytest.approx(0.001)
    assert samples[1].flops == 2 * 16 * 32 * 64
    assert not any(s.gap for s in samples)
    assert span == pytest.approx(0.504) and span >= sum(s.ms for s in samples)


def test_profiler_without_events_only_counts():
    backend = SimpleNamespace(device="gpu", cp=fake_cp(FakeClock()), _prof=None, graphs=False)
    ran = []
    with profiling(backend, events=False) as prof:
        prof.launch("act_f32", lambda *a, **k: ran.append(1), (1,), (256,), (Arr(8), Arr(8), np.int64(8)))
        samples = prof.samples()
    assert ran and samples[0].ms == 0.0 and samples[0].nbytes == 64 and prof.span_ms() is None


def test_profiling_needs_the_gpu_backend():
    from rocmforge.backends.numpy_backend import NumpyBackend

    with pytest.raises(RocmforgeError, match="needs the GPU backend"):
        with profiling(NumpyBackend()):
            pass


def test_profiling_does_not_nest():
    backend = SimpleNamespace(device="gpu", cp=fake_cp(FakeClock()), _prof=None, graphs=True)
    with profiling(backend):
        with pytest.raises(RocmforgeError, match="already running"):
            with profiling(backend):
                pass
    assert backend._prof is None and backend.graphs is True


# ------------------------------------------------------------------ the command line
def test_bench_flags_parse():
    args = build_parser().parse_args(["bench", "m.gguf", "--device", "gpu", "--profile", "--json", "--prompt", "64"])
    assert args.profile and args.json and args.prompt == 64 and args.device == "gpu"
    assert build_parser().parse_args(["bench", "m.gguf"]).profile is False


def test_bench_profile_on_the_cpu_is_a_clear_error(capsys, tmp_path):
    rc = main(["bench", str(tmp_path / "not-loaded.gguf"), "--profile"])     # refused before loading
    err = capsys.readouterr().err
    assert rc == 2
    assert "--profile" in err and "needs the GPU backend" in err and "--device gpu" in err
    assert "Traceback" not in err


def test_bench_profile_when_auto_finds_no_gpu(capsys, monkeypatch):
    import rocmforge.cli.bench as bench

    stub = SimpleNamespace(backend=SimpleNamespace(device="cpu", name="numpy"))
    monkeypatch.setattr(bench, "load", lambda args, tokenizer=False: stub)
    rc = main(["bench", "m.gguf", "--device", "auto", "--profile"])
    err = capsys.readouterr().err
    assert rc == 2 and "numpy backend" in err and "found no GPU" in err


# ------------------------------------------------------------------ the real backend's launch arguments
@pytest.fixture
def np_backend(monkeypatch):
    """A CupyBackend over a fake ``cupy`` made of NumPy, kernels replaced by no-ops: its launches reach
    the Profiler with the arguments the real kernels get, so the cost functions read their real order."""
    import sys
    import types

    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
    fake.cuda = SimpleNamespace(
        Device=lambda *a: SimpleNamespace(attributes={"WarpSize": 32, "MultiProcessorCount": 132},
                                          mem_info=(70 << 30, 80 << 30)),     # (free, total) bytes
        runtime=SimpleNamespace(is_hip=False), memory=SimpleNamespace(OutOfMemoryError=MemoryError))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from rocmforge.backends.cupy_backend import CupyBackend

    be = CupyBackend(graphs=False)
    be._kernel = lambda file, name, defines=(): (lambda grid, block, args, shared_mem=0: None)
    return be


def _costs(be, fn):
    with profiling(be, events=False) as prof:
        fn()
        samples = prof.samples()
    return {s.name: s for s in samples}


@pytest.mark.parametrize("qtype,row_bytes,kernel", [("Q4_0", 8 * 18, "matvec_q4_0"), ("F16", 512, "matvec_f16"),
                                                     ("MXFP8_E4M3", 8 * 33, "matvec_mx_fp8_e4m3")])
def test_backend_matvec_launches_have_costs(np_backend, qtype, row_bytes, kernel):
    from rocmforge.backends.cupy_backend import GpuWeight

    N, K = 64, 256
    w = GpuWeight(qtype, (N, K), np.zeros(N * row_bytes, np.uint8), row_bytes)
    s = _costs(np_backend, lambda: np_backend.linear(np.zeros((2, K), np.float32), w))[kernel]
    assert s.weight_bytes == N * row_bytes and s.flops == 2 * N * K * 2
    assert s.nbytes > s.weight_bytes


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the no-op kernels leave garbage
def test_backend_embedding_and_gemm_costs(np_backend):
    from rocmforge.backends.cupy_backend import GpuWeight

    N, K, rb = 64, 256, 8 * 18
    w = GpuWeight("Q4_0", (N, K), np.zeros(N * rb, np.uint8), rb)
    emb = _costs(np_backend, lambda: np_backend.embedding(w, [3, 5]))["dequant_q4_0"]
    assert emb.weight_bytes == 2 * rb
    T = np_backend.mv_batch_max + 8        # past the rows the matvec takes 8 at a time: the GEMM path
    got = _costs(np_backend, lambda: np_backend.linear(np.zeros((T, K), np.float32), w))
    assert set(got) >= {"dequant_q4_0", "cupy_cast_f16", "cublas_gemm_f16", "cupy_cast_f32"}
    assert got["dequant_q4_0"].weight_bytes == N * rb
    assert got["cublas_gemm_f16"].flops == 2 * T * N * K
    with profiling(np_backend, events=False) as prof:       # 16 rows: the batch kernel, no GEMM
        np_backend.linear(np.zeros((16, K), np.float32), w)
        samples = {s.name: s for s in prof.samples()}
    assert "mmq_q4_0" in samples and "cublas_gemm_f16" not in samples and "matvec_q4_0" not in samples
    assert samples["mmq_q4_0"].weight_bytes == N * rb and samples["mmq_q4_0"].flops == 2 * 16 * N * K
    np_backend.mmq = False
    try:
        with profiling(np_backend, events=False) as prof:   # without it: two 8-row matvecs
            np_backend.linear(np.zeros((16, K), np.float32), w)
            names = [s.name for s in prof.samples()]
    finally:
        np_backend.mmq = True
    assert names.count("matvec_q4_0") == 2 and "cublas_gemm_f16" not in names


def test_backend_attention_costs(np_backend):
    from rocmforge.backends.cupy_backend import GpuKVCache

    H, Hkv, D = 4, 2, 32
    cache = GpuKVCache(np, 1, Hkv, D, D, 64)
    rng = np.random.default_rng(0)

    def att(T, pos0):
        return lambda: np_backend.attention(rng.standard_normal((T, H, D)), rng.standard_normal((T, Hkv, D)),
                                            rng.standard_normal((T, Hkv, D)), cache, 0, pos0, 0.125)

    pre = _costs(np_backend, att(16, 0))
    assert pre["attn_prefill"].flops == 2 * H * 2 * D * (16 * 17 // 2)
    assert pre["kv_store"].nbytes == 2 * 16 * Hkv * D * (4 + 2)      # fp32 in, fp16 out
    dec = _costs(np_backend, att(1, 16))["attn_decode"]
    assert dec.flops == 2 * H * 2 * D * 17
    assert dec.nbytes >= 17 * Hkv * 2 * D * 2
