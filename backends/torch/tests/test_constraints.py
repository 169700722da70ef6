"""Grammar- and schema-constrained decoding on the real SmolLM2."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from gateway_schemas.canonical import GrammarConstraint, JsonSchemaConstraint, SamplingParams
from gateway_torch.causal import TorchBackend
from test_causal import FRANCE, STORY, chat, collect

from gateway.errors import InvalidRequest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}


@pytest.mark.asyncio
@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_json_schema_output_always_validates(smol: TorchBackend, temperature: float) -> None:
    request = chat(
        "Describe a person as JSON.",
        max_tokens=200,
        constraint=JsonSchemaConstraint(schema=PERSON),
        sampling=SamplingParams(temperature=temperature, seed=3),
    )
    text, chunks = await collect(smol, request)
    assert chunks[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.asyncio
async def test_empty_schema_gives_a_json_object(smol: TorchBackend) -> None:
    text, _ = await collect(smol, chat(FRANCE, max_tokens=60, constraint=JsonSchemaConstraint()))
    assert isinstance(json.loads(text), dict)


@pytest.mark.asyncio
async def test_gbnf_grammar_limits_the_answer(smol: TorchBackend) -> None:
    grammar = 'root ::= ("yes" | "no") "."'
    text, chunks = await collect(
        smol,
        chat("Is Paris in France?", max_tokens=10, constraint=GrammarConstraint(grammar=grammar)),
    )
    assert text in {"yes.", "no."}
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.asyncio
async def test_invalid_grammar_and_schema_are_400_with_the_library_message(
    smol: TorchBackend,
) -> None:
    with pytest.raises(InvalidRequest, match=r"Invalid grammar: .*undefined_rule"):
        await collect(smol, chat(constraint=GrammarConstraint(grammar="root ::= undefined_rule")))
    with pytest.raises(InvalidRequest, match="Invalid json_schema"):
        await collect(smol, chat(constraint=JsonSchemaConstraint(schema={"type": "nonsense"})))


@pytest.mark.asyncio
async def test_constrained_and_free_sequences_share_a_batch(smol: TorchBackend) -> None:
    free = chat(STORY, request_id="free", max_tokens=16)
    alone, _ = await collect(smol, free)
    constrained = chat(
        "Describe a person as JSON.",
        request_id="json",
        max_tokens=200,
        constraint=JsonSchemaConstraint(schema=PERSON),
    )
    (json_text, _), (free_text, _) = await asyncio.gather(
        collect(smol, constrained), collect(smol, free)
    )
    assert free_text == alone
    jsonschema.validate(json.loads(json_text), PERSON)
