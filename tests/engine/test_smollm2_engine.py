"""The engine on the real SmolLM2-135M (slow): batched, chunked and prefix-cached greedy == alone."""

import pytest
from models import needs_smollm2

pytestmark = [pytest.mark.slow, needs_smollm2]


def test_smollm2_batched_greedy_equals_alone():
    import rocmforge
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions
    from rocmforge.generate import generate_ids
    from rocmforge.sampler import SamplingParams

    model = rocmforge.load_model("smollm2", device="numpy")   # what `rocmforge serve` runs on the CPU
    tok = model.tokenizer
    system = "You are a helpful assistant who answers briefly and precisely. " * 3   # > 2 blocks
    prompts = [tok.encode(system + q) for q in ("What is the capital of France?", "Name a primary colour.",
                                                "Count to five:", "Once upon a time")]
    alone = [list(generate_ids(model, p, 12, SamplingParams(temperature=0))) for p in prompts]
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=64, block_size=16, max_num_batched_tokens=24)
    out = eng.run_to_completion([EngineRequest(f"r{i}", p, SamplingOptions(max_tokens=12, temperature=0,
                                                                            ignore_eos=True))
                                 for i, p in enumerate(prompts)])
    got = [[e.token_id for e in out[f"r{i}"] if e.token_id is not None] for i in range(4)]
    for g, a in zip(got, alone):
        assert g[:len(a)] == a          # alone stops at EOS; the engine was told to ignore it
    again = eng.run_to_completion([EngineRequest("again", prompts[1], SamplingOptions(max_tokens=12, temperature=0,
                                                                                      ignore_eos=True))])
    assert [e.token_id for e in again["again"] if e.token_id is not None] == got[1]
    st = eng.stats()
    assert again["again"][-1].cached_prompt_tokens >= 32
    assert st.prefix_hits_total >= 32 and st.kv_blocks_used == 0
