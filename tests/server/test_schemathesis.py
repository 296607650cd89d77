"""Property tests against the real server's own /openapi.json: no 5xx, answers match the declared schema.

Generated bodies are bounded (a few tokens, at most two choices) so each example costs the CPU model a
handful of steps, not a whole context."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)


def bounded(body):
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > 3:
                body[key] = 3
            if key in body and body[key] is None:       # null: "up to the context", a minute on 2 cores
                body[key] = 3
        if "messages" in body and "max_tokens" not in body:
            body["max_tokens"] = 3
        if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > 2:
            body["n"] = 2
        if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 2:
            body["prompt"] = body["prompt"][:2]
    return body


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_properties(server, mode):
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {o.path for o in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize", "/metrics"}
    for operation in operations:
        if mode == "negative" and operation.method.upper() != "POST":
            continue        # an operation without a body or parameters has no invalid input
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.body = bounded(case.body)
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance,
                                           content_type_conformance], timeout=60)

        check()
