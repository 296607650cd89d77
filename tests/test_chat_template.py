"""Chat templates render like transformers' apply_chat_template, inside a sandbox."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from models import needs_gemma3, needs_smollm2

from rocmforge.chat_template import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    PLAIN_TEMPLATE,
    ChatTemplateError,
    fallback_template,
    render,
)

SMOLLM = needs_smollm2
GEMMA = needs_gemma3

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Und auf Deutsch? 🙂"},
    ],
    [{"role": "user", "content": "  spaces\nand\ttabs  "}, {"role": "assistant", "content": "ok"}],
]


# ------------------------------------------------------------------ SmolLM2's own template


@SMOLLM
def test_smollm_template_pinned(smollm):
    out = smollm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    out = smollm.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], add_generation_prompt=False
    )
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"


@SMOLLM
def test_smollm_encode_chat(smollm):
    ids = smollm.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids[0] == smollm.token_to_id("<|im_start|>")
    assert ids.count(smollm.token_to_id("<|im_end|>")) == 2
    assert smollm.decode(ids, skip_special=False).endswith("<|im_start|>assistant\n")


@pytest.mark.slow
@SMOLLM
def test_smollm_template_matches_transformers(smollm, smollm_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(smollm_path.parent), gguf_file=smollm_path.name)
    for conv in CONVERSATIONS:
        for gen in (True, False):
            want = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert smollm.apply_chat_template(conv, add_generation_prompt=gen) == want
            want_ids = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen)
            if isinstance(want_ids, dict) or hasattr(want_ids, "keys"):
                want_ids = want_ids["input_ids"]
            assert smollm.encode_chat(conv, add_generation_prompt=gen) == list(want_ids)


# ------------------------------------------------------------------ fallbacks


@GEMMA
def test_gemma_fallback_template(gemma):
    assert gemma.chat_template is None  # this GGUF ships none
    assert fallback_template(gemma) == GEMMA_TEMPLATE
    out = gemma.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert out == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = gemma.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids.count(gemma.bos_id) == 1 and ids[0] == gemma.bos_id
    assert ids[-3:] == gemma.encode("<start_of_turn>model\n", add_special=False)


def test_fallback_by_vocabulary():
    class Vocab:
        def __init__(self, *tokens):
            self.tokens = set(tokens)

        def token_to_id(self, t):
            return 1 if t in self.tokens else None

    assert fallback_template(Vocab("<|im_start|>", "<|im_end|>")) == CHATML_TEMPLATE
    assert fallback_template(Vocab()) == PLAIN_TEMPLATE
    assert fallback_template(None) == PLAIN_TEMPLATE
    out = render(PLAIN_TEMPLATE, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert out == "System: S\n\nUser: U\n\nAssistant:"
    assert render(CHATML_TEMPLATE, [{"role": "user", "content": "U"}], add_generation_prompt=False) == (
        "<|im_start|>user\nU<|im_end|>\n"
    )


# ------------------------------------------------------------------ environment


def test_variables_and_helpers():
    tmpl = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}={{ m['content'] | tojson }};{% endfor %}"
        "{% if add_generation_prompt %}GEN{% endif %}{{ eos_token }}|{{ extra }}"
    )
    out = render(tmpl, [{"role": "user", "content": "héllo <b>"}], bos_token="<s>", eos_token="</s>", extra=3)
    assert out == '<s>user="héllo <b>";GEN</s>|3'
    out = render("{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2, sort_keys=True) }}", [])
    assert json.loads(out) == {"a": [1, 2], "b": 1} and "\n  " in out
    year = render("{{ strftime_now('%Y') }}", [])
    assert year == str(datetime.now().year)


def test_trim_and_lstrip_blocks_and_loopcontrols():
    tmpl = "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n{{ m['content'] }}\n{% endfor %}"
    assert render(tmpl, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\n"


def test_generation_tag_renders_body():
    assert render("{% generation %}X{{ 1 + 1 }}{% endgeneration %}", []) == "X2"


def test_raise_exception_is_a_chat_template_error():
    tmpl = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render(tmpl, [{"role": "assistant", "content": "x"}])


def test_syntax_error_names_the_line():
    with pytest.raises(ChatTemplateError, match="line 2"):
        render("ok\n{% if %}", [])


@pytest.mark.parametrize(
    "tmpl",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append(1) }}",  # immutable sandbox: no mutating methods
        "{% set ns = namespace(_x=1) %}",
        "{% set ns = namespace() %}{% set ns._secret = 1 %}",
    ],
)
def test_sandbox_blocks_escapes(tmpl):
    with pytest.raises(ChatTemplateError):
        render(tmpl, [{"role": "user", "content": "x"}])


def test_sandbox_hides_dunder_attributes():
    # unsafe attributes are undefined (rendered empty), never the real object
    assert render("{{ messages.__class__ }}|{{ messages.__class__ is defined }}", []) == "|False"


def test_template_sees_only_plain_data():
    class Sneaky(str):
        def dangerous(self):  # pragma: no cover - must never be reachable
            raise AssertionError("called")

    class Obj:
        def __str__(self):
            return "obj"

    out = render(
        "{{ messages[0]['content'] }}|{{ messages[0]['content'].dangerous is defined }}|{{ thing }}",
        [{"role": "user", "content": Sneaky("hi")}],
        thing=Obj(),
    )
    assert out == "hi|False|obj"


def test_bad_messages():
    with pytest.raises(ChatTemplateError, match="list"):
        render("x", "hello")
    with pytest.raises(ChatTemplateError, match="role"):
        render("x", [{"content": "no role"}])
