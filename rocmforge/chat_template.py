"""Chat templates: Jinja2 templates shipped with a model, rendered in a sandbox.

A chat template is code from the model's author (GGUF ``tokenizer.chat_template``,
HF ``tokenizer_config.json`` / ``chat_template.jinja``), so it runs in
``jinja2.sandbox.ImmutableSandboxedEnvironment`` and only ever sees plain JSON
data (dicts, lists, strings, numbers), never caller objects with methods.

The environment offers what Hugging Face templates expect (the conventions of
transformers' ``apply_chat_template``): ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension, ``raise_exception(msg)``, ``strftime_now(fmt)``, a
``tojson`` filter that keeps non-ASCII text and takes ``indent``, a
``namespace`` that refuses ``_``-prefixed names, the ``{% generation %}`` tag
(rendered as its body), and the variables ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` plus any extra keyword
(``tools``, ``documents``, ``enable_thinking``, ...).

A model without a template gets ``fallback_template(tokenizer)``: the model's
own chat format when its vocabulary shows which one it was trained on (Gemma
``<start_of_turn>``, ChatML ``<|im_start|>``, Llama 3 ``<|start_header_id|>``),
else a plain transcript::

    System: {system}

    User: {user}

    Assistant: {assistant}

    Assistant:
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from rocmforge.errors import RocmforgeError


class ChatTemplateError(RocmforgeError):
    """A chat template failed to compile or render (including the template's own raise_exception)."""


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``template`` for ``messages``; errors raise ``ChatTemplateError``."""
    import jinja2

    compiled = _compile(template)
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ChatTemplateError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages)}"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ChatTemplateError(f"messages[{i}] must be a dict with a 'role' key, got {m!r}")
    context = {
        **_plain(extra),
        "messages": _plain(list(messages)),
        "add_generation_prompt": bool(add_generation_prompt),
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    try:
        return compiled.render(**context)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from e


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; we just render it."""

        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    class SafeNamespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses ``_``-prefixed names (no reaching CPython internals)."""

        def __init__(*args: Any, **kwargs: Any):  # same signature trick as jinja2's Namespace
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            _check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates may not set {name!r} on a namespace")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # jinja's own tojson escapes HTML characters, which no chat format wants
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        extensions=[GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = SafeNamespace
    return env


def _plain(value: Any) -> Any:
    """A copy of ``value`` made only of JSON types (dict, list, str, int, float, bool, None).

    Subclasses are cut back to their base type and anything else becomes its
    ``str()``, so a template never gets hold of an object with methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


# ----------------------------------------------------------------- fallbacks

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def fallback_template(tokenizer: Any = None) -> str:
    """The template used when a model ships none (see the module docstring)."""
    has = (lambda t: tokenizer.token_to_id(t) is not None) if tokenizer is not None else (lambda t: False)
    if has("<start_of_turn>") and has("<end_of_turn>"):
        return GEMMA_TEMPLATE
    if has("<|im_start|>") and has("<|im_end|>"):
        return CHATML_TEMPLATE
    if has("<|start_header_id|>") and has("<|eot_id|>"):
        return LLAMA3_TEMPLATE
    return PLAIN_TEMPLATE
