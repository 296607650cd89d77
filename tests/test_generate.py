"""Generation: cache vs recompute, context limits, stop strings, EOS, UTF-8-safe streaming."""

import numpy as np
import pytest

import rocmforge
from rocmforge.errors import RocmforgeError
from rocmforge.generate import generate, generate_ids
from rocmforge.sampler import SamplingParams

PROMPT = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31]
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from rocmforge.registry import get
    from rocmforge.testing.tiny import make_hf_model

    t = next(t for t in get("llama").recipe_obj.tiny if t["name"] == "llama-gqa")
    folder = make_hf_model(t["hf_class"], t["config"], tmp_path_factory.mktemp("tiny") / "llama", seed=5)
    return rocmforge.load_model(str(folder))


# ---------------------------------------------------------------- token level, tiny LLaMA

def test_cached_generation_equals_recomputing_everything(model):
    got = list(generate_ids(model, PROMPT, 24, GREEDY))
    ids = list(PROMPT)
    for _ in range(24):
        ids.append(int(np.argmax(model.logits(ids)[-1])))
    assert got == ids[len(PROMPT):]
    assert len(set(got)) > 1   # not a degenerate constant stream that would hide a cache bug


def test_seeded_sampling_is_reproducible(model):
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=11)
    a = list(generate_ids(model, PROMPT, 16, p))
    b = list(generate_ids(model, PROMPT, 16, p))
    c = list(generate_ids(model, PROMPT, 16, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=12)))
    assert a == b
    assert a != c


def test_stop_ids_end_generation_and_are_not_yielded(model):
    full = list(generate_ids(model, PROMPT, 12, GREEDY))
    stop = full[5]
    first = full.index(stop)
    assert list(generate_ids(model, PROMPT, 12, GREEDY, stop_ids={stop})) == full[:first]


def test_empty_prompt_raises(model):
    with pytest.raises(RocmforgeError, match="no tokens"):
        list(generate_ids(model, [], 4, GREEDY))


def test_prompt_longer_than_context_raises(model):
    n = model.context_length
    with pytest.raises(RocmforgeError, match="context"):
        list(generate_ids(model, [5] * (n + 10), 4, GREEDY))
    with pytest.raises(RocmforgeError, match="context"):
        list(generate_ids(model, [5] * n, 4, GREEDY))


def test_generation_stops_at_the_context_end(model):
    n = model.context_length
    got = list(generate_ids(model, [5] * (n - 3), 50, GREEDY))
    assert len(got) == 3


# ---------------------------------------------------------------- text level: a scripted model

class ScriptedModel:
    """Emits a fixed script of token ids (one-hot logits), whatever the prompt; real tokenizer."""

    path = "scripted"
    context_length = 4096

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script = tokenizer, list(script)

    def new_session(self, max_tokens):
        model = self

        class _S:
            step = 0

            def feed(self, ids):
                logits = np.zeros(model.tokenizer.vocab_size, np.float32)
                tok = model.script[self.step] if self.step < len(model.script) else model.script[-1]
                logits[tok] = 10.0
                self.step += 1
                return logits

        return _S()


@pytest.fixture(scope="module")
def tok():
    from rocmforge.installed_models import resolve_model

    try:
        path = resolve_model("smollm2")
    except RocmforgeError as exc:
        pytest.skip(f"SmolLM2 is not installed: {exc}")
    return rocmforge.load_model(str(path)).tokenizer


def run(tok, text_or_ids, stop=None, max_tokens=64, **kw):
    ids = tok.encode(text_or_ids, add_special=False) if isinstance(text_or_ids, str) else text_or_ids
    m = ScriptedModel(tok, ids)
    return list(generate(m, "x", max_tokens=min(max_tokens, len(ids)), temperature=0, stop=stop, **kw))


def test_scripted_model_streams_the_text(tok):
    text = "Hello world! STOP here"
    pieces = run(tok, text)
    assert "".join(pieces) == text
    assert len(pieces) > 1


def test_stop_string_spanning_pieces_is_cut_exactly(tok):
    text = "Hello world! STOP here"
    ids = tok.encode(text, add_special=False)
    # the stop string is split over several tokens
    assert not any("STOP" in tok.decode([i]) for i in ids)
    pieces = run(tok, text, stop=["STOP"])
    assert "".join(pieces) == "Hello world! "


@pytest.mark.parametrize("stop, want", [
    (["lo w"], "Hel"),                  # inside and across tokens
    (["world", "Hello"], ""),           # the earliest match wins, even at the very start
    (["here", "STOP"], "Hello world! "),
    (["STOPPED"], "Hello world! STOP here"),  # a prefix that never completes is released at the end
    (["! S"], "Hello world"),
    ([""], "Hello world! STOP here"),   # empty stop strings are ignored
])
def test_stop_strings(tok, stop, want):
    assert "".join(run(tok, "Hello world! STOP here", stop=stop)) == want


def test_stop_generation_ends_early(tok):
    # tokens after the stop are never generated: the scripted session is not fed past the stop
    text = "one two three four five six seven eight"
    ids = tok.encode(text, add_special=False)
    fed = []

    class Counting(ScriptedModel):
        def new_session(self, max_tokens):
            s = super().new_session(max_tokens)
            orig = s.feed

            def feed(ids):
                fed.append(ids)
                return orig(ids)

            s.feed = feed
            return s

    out = list(generate(Counting(tok, ids), "x", max_tokens=len(ids), temperature=0, stop=["three"]))
    assert "".join(out) == "one two "
    assert len(fed) < len(ids)


def test_held_back_text_never_contains_a_completed_stop(tok):
    text = "abc STO STOP xyz"
    pieces = run(tok, text, stop=["STOP"])
    assert "".join(pieces) == "abc STO "
    for i in range(1, len(pieces) + 1):
        assert "STOP" not in "".join(pieces[:i])


def test_eos_stops_generation(tok):
    eos = min(tok.eos_ids)
    ids = tok.encode("Hello world", add_special=False) + [eos] + tok.encode(" more", add_special=False)
    assert "".join(run(tok, ids)) == "Hello world"
    # ignore_eos goes on; the special token itself is not shown
    assert "".join(run(tok, ids, ignore_eos=True)) == "Hello world more"


@pytest.mark.parametrize("text", ["emoji 🎉🚀 and 日本語テキスト", "Café naïve — Ωmega ∑", "🤖" * 5, "a\u00e9\U0001f600b"])
def test_stream_never_splits_utf8(tok, text):
    ids = tok.encode(text, add_special=False)
    assert len(ids) > len(text.split())   # multi-byte characters really are split over tokens
    pieces = run(tok, text)
    assert "".join(pieces) == text
    for p in pieces:
        assert "\ufffd" not in p
        p.encode("utf-8")   # every piece is valid text on its own


def test_stream_with_stop_never_splits_utf8(tok):
    text = "日本語 🎉 end"
    pieces = run(tok, text, stop=["🎉"])
    assert "".join(pieces) == "日本語 "
    assert all("\ufffd" not in p for p in pieces)


def test_max_tokens_bounds_the_stream(tok):
    ids = tok.encode("one two three four five six", add_special=False)
    m = ScriptedModel(tok, ids)
    assert "".join(generate(m, "x", max_tokens=3, temperature=0)) == tok.decode(ids[:3])
