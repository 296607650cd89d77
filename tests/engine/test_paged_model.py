"""Whole models through the paged KV store: chunked prefill then decode == the stateless full forward."""

import numpy as np
import pytest

from rocmforge.engine.model_step import ModelStep, StepItem
from rocmforge.testing.conformance import nmse

IDS = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77, 150, 9, 240, 1, 33, 66, 180, 2, 8]

# one model per attention feature the paged cache must carry
MODELS = [
    ("llama", "llama-gqa"),                   # GQA
    ("llama", "mistral-swa"),                 # sliding window
    ("gemma2", "gemma2-swa-softcap"),         # softcap + window
    ("bloom", "bloom-alibi"),                 # ALiBi
    ("gpt_oss", "gpt-oss-alternating"),       # sinks
    ("llama4", "llama4-chunked-nope-moe"),    # chunked attention
    ("gemma4", "gemma4-kv-shared"),           # kv_from: layers read another layer's KV
    ("gemma4", "gemma4-global-kv"),           # per-layer K/V shapes
    ("deepseek2", "deepseek2-lite"),          # MLA latent cache, head_dim_v != head_dim
]


@pytest.mark.parametrize("arch,name", MODELS, ids=[n for _, n in MODELS])
def test_paged_prefill_chunks_then_decode_equal_full_forward(tiny_model, arch, name):
    model = tiny_model(arch, name)
    vocab = model.hparams["vocab_size"]
    ids = [i % vocab for i in IDS]
    full = model.logits(ids)
    step = ModelStep(model, num_blocks=16, block_size=4)
    table = [11, 2, 7, 0, 13, 5]                  # scattered, out of order
    rows = []
    pos = 0
    for n in (7, 6) + (1,) * (len(ids) - 13):      # two prefill chunks, then one-token decodes
        rows.append(step.run([StepItem("s", ids[pos:pos + n], pos, table, all_rows=True)])[0])
        pos += n
    got = np.concatenate(rows)
    assert nmse(got, full) < 1e-10


def test_two_sequences_in_one_step_equal_each_alone(tiny_model):
    model = tiny_model("llama", "mistral-swa")
    a, b = IDS[:12], IDS[5:]
    step = ModelStep(model, num_blocks=16, block_size=4)
    out = step.run([StepItem("a", a, 0, [0, 1, 2], all_rows=True), StepItem("b", b, 0, [5, 4, 3, 6, 7])])
    assert nmse(out[0], model.logits(a)) < 1e-10
    assert out[1].shape == (model.hparams["vocab_size"],)
    assert nmse(out[1], model.logits(b)[-1]) < 1e-10


def test_greedy_items_get_the_argmax_of_their_logits_and_while_running_is_called_once(tiny_model):
    model = tiny_model("llama", "llama-gqa")
    prompts = {"a": IDS[:9], "b": IDS[4:15], "c": IDS[2:5]}
    tables = {"a": [0, 1, 2], "b": [3, 4, 5, 6], "c": [7, 8]}
    calls = []

    def run(greedy):
        step = ModelStep(model, num_blocks=16, block_size=4)
        items = [StepItem(s, p, 0, tables[s], greedy=greedy) for s, p in prompts.items()]
        return step.run(items, while_running=lambda: calls.append(greedy))

    rows, ids = run(False), run(True)
    want = [int(np.argmax(row)) for row in rows]
    assert want == [int(np.argmax(model.logits(p)[-1])) for p in prompts.values()]
    assert all(isinstance(t, int) for t in ids) and ids == want
    assert calls == [False, True]
    # one item that is not greedy gets every item its logits
    mixed = ModelStep(model, num_blocks=16, block_size=4)
    out = mixed.run([StepItem("a", prompts["a"], 0, tables["a"], greedy=True),
                     StepItem("b", prompts["b"], 0, tables["b"])])
    assert [o.shape for o in out] == [(model.hparams["vocab_size"],)] * 2


def test_backend_argmax_follows_numpy_on_ties_nan_and_infinities(tiny_model):
    backend = ModelStep(tiny_model("llama", "llama-gqa"), num_blocks=4, block_size=4).backend
    x = np.array([[1.0, 3.0, 3.0, 2.0], [np.nan, 5.0, np.nan, 1.0], [-np.inf] * 4, [0.0, np.inf, 7.0, np.inf]],
                 np.float32)
    assert backend.argmax(x).tolist() == np.argmax(x, axis=-1).tolist() == [1, 0, 0, 1]


def test_on_the_cpu_while_running_comes_before_the_forward(tiny_model):
    """A CPU forward returns when it is done: the last step's tokens must not wait a whole step."""
    step = ModelStep(tiny_model("llama", "llama-gqa"), num_blocks=16, block_size=4)
    assert not step.backend.queues_work
    order, forward = [], step.executor.forward_batch

    def traced(*a, **kw):
        order.append("forward")
        return forward(*a, **kw)

    step.executor.forward_batch = traced
    step.run([StepItem("a", IDS[:5], 0, [0, 1])], while_running=lambda: order.append("deliver"))
    assert order == ["deliver", "forward"]
