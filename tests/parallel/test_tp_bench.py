"""benchmarks/tp_bench.py off the multi-GPU machine: its arguments, its shape logic against the real plan,
and a whole run over CPU ranks on the tiny shape."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="module")
def bench():
    import tp_bench

    return tp_bench


@pytest.fixture(scope="module")
def tiny_file(bench, tmp_path_factory):
    return bench.write_model("tiny", bench.model_path(tmp_path_factory.mktemp("tp"), "tiny"))


def test_arguments(bench):
    a = bench.build_parser().parse_args(["--tp", "4,1,2,2", "--shape", "tiny", "--json"])
    assert a.tp == [1, 2, 4] and a.shape == "tiny" and a.json and a.prompt == 512 and a.gen == 128
    assert bench.build_parser().parse_args([]).tp == [1, 2, 4, 8]
    for bad in ("0,2", "two"):
        with pytest.raises(SystemExit):
            bench.build_parser().parse_args(["--tp", bad])


def test_70b_splits_over_1_to_8_ranks(bench):
    plans = {t: bench.shape_plan(bench.SHAPES["70b"], t) for t in (1, 2, 4, 8)}
    assert all(p["ok"] for p in plans.values())
    assert [plans[t]["kv_heads_per_rank"] for t in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert plans[8]["ff_per_rank"] == 3584 and plans[8]["heads_per_rank"] == 8
    assert 38e9 < plans[1]["weight_bytes_per_rank"] < 42e9        # fits one 141 GB H200
    bad = bench.shape_plan({**bench.SHAPES["tiny"], "n_head": 6, "n_kv": 3, "ff": 480}, 4)
    assert not bad["ok"] and len(bad["problems"]) == 3


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shape_plan_matches_the_real_shards(bench, tiny_file, tp):
    """The benchmark's per-rank weight bytes are what rocmforge.parallel really cuts from the file."""
    import rocmforge
    from rocmforge.parallel import build_plan
    from rocmforge.parallel.shards import take

    model = rocmforge.load_model(str(tiny_file), tokenizer=False)
    plan = build_plan(model.executor, model.tensors, tp)
    for r in range(tp):
        got = 0
        for name in model.tensors:
            raw, cut = model.raw_tensor(name), plan.tensors.get(name)
            got += take(raw, cut, r).nbytes if cut is not None else raw.nbytes
        assert got == bench.shape_plan(bench.SHAPES["tiny"], tp)["weight_bytes_per_rank"]


def test_a_run_over_cpu_ranks(bench, tiny_file, capsys):
    assert bench.main(["--model", str(tiny_file), "--shape", "tiny", "--device", "cpu", "--tp", "1,2", "--prompt",
                       "16", "--gen", "4", "--repeat", "1", "--check-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    one, two = out["runs"]
    assert one["tp"] == 1 and two["tp"] == 2 and "comm" not in one
    assert two["comm"]["collectives_per_step"] == 2 * bench.SHAPES["tiny"]["n_layer"] + 2
    assert two["comm"]["tg_comm_ms_per_step_max"] > 0
    assert two["check"]["tokens_equal_to_tp1"] == 8 and two["check"]["prompt_logits_nmse_vs_tp1"] <= 1e-10
    assert set(out["scaling"]["2"]) == {"tg_speedup", "pp_speedup", "bar", "meets_bar"}
