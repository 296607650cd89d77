"""ROCMFORGE_STEP_TRACE: one line per engine step with its phases, and the summary that reads them."""

import json

from rocmforge.engine.llm_engine import LLMEngine
from rocmforge.engine.protocol import EngineRequest, SamplingOptions
from rocmforge.engine.step_trace import ENV, main, summarise


def test_each_step_writes_its_phases_and_shape(tiny_model, tmp_path, monkeypatch, capsys):
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(ENV, str(path))
    model = tiny_model("llama", "llama-gqa")
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=40, block_size=4, max_num_batched_tokens=6)
    reqs = [EngineRequest(f"r{i}", [3, 17, 42, 99, 7][: 3 + i], SamplingOptions(max_tokens=3, temperature=0,
                                                                               ignore_eos=True))
            for i in range(2)]
    eng.run_to_completion(reqs)
    eng.trace.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    # budget 6: step 1 takes r0's 3 prompt rows and 3 of r1's 4; step 2 r1's last row (its first
    # token) beside r0's decode; then decodes only
    assert [(s["seqs"], s["rows"], s["prompt"]) for s in lines] == [(2, 6, 6), (2, 2, 0), (2, 2, 0), (1, 1, 0)]
    assert all(s["fwd"] > 0 and s["sched"] >= 0 and s["sample"] >= 0 and s["deliver"] == 0 for s in lines)
    assert all(b["t"] > a["t"] for a, b in zip(lines, lines[1:]))
    s = summarise(lines)
    assert s["mixed"]["steps"] == 1 and s["decode"]["steps"] == 3 and s["gap_ms"]["n"] == 3
    assert main([str(path)]) == 0
    assert "decode: 3 steps" in capsys.readouterr().out


def test_no_trace_without_the_variable(tiny_model, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert LLMEngine(tiny_model("llama", "llama-gqa"), max_num_seqs=2, num_blocks=20, block_size=4).trace is None
