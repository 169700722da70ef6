"""Tools on the torch backend: prompts through the chat template or the Hermes text
fallback, and calls forced by the grammar of `gateway.engine.tools` on the real SmolLM2."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from gateway_engine.tokens import PromptEncoder
from gateway_schemas.canonical import (
    ChatMessage,
    GrammarConstraint,
    SamplingParams,
    ToolCall,
    ToolDefinition,
)
from gateway_torch.causal import TorchBackend
from test_causal import chat, collect

from gateway.engine.tools import call_grammar, split_calls

WEATHER = ToolDefinition(
    name="get_weather",
    description="Get the current weather in a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolDefinition(
    name="get_time",
    description="Get the current time in a timezone",
    parameters={
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 30}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
)
HISTORY = [
    ChatMessage(role="user", content="Weather in Paris?"),
    ChatMessage(
        role="assistant",
        tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')],
    ),
    ChatMessage(role="tool", content="Sunny, 22 C", tool_call_id="call_1"),
]

# A template in the style of Qwen 2.5's: tools and calls in the Hermes format, its own words
# (transformers trims the newline after a block tag, hence the newlines as expressions).
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nFUNCTIONS:"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\\n' }}Answer calls as <tool_call>{json}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response>"
    "<|im_end|>\n"
    "{% elif m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>{{ {'name': c.function.name, "
    "'arguments': c.function.arguments} | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def encoder_with(smol: TorchBackend, template: str) -> PromptEncoder:
    tokenizer = copy.copy(smol._loaded().tokenizer)
    tokenizer.chat_template = template
    return PromptEncoder(tokenizer, smol._loaded().vocab_size)


@pytest.mark.asyncio
async def test_default_template_gets_tools_as_text(smol: TorchBackend) -> None:
    assert not smol._loaded().encoder.native_tools
    rendered = await smol.render_chat(HISTORY, tools=[WEATHER])
    assert rendered.startswith("<|im_start|>system\n# Tools\n")
    assert json.dumps(WEATHER.parameters) in rendered
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|>'
    ) in rendered
    assert "<|im_start|>user\n<tool_response>\nSunny, 22 C\n</tool_response><|im_end|>" in rendered
    assert "<|im_start|>tool" not in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    # The history renders without tools too (a follow-up with `tool_choice: none`).
    assert "# Tools" not in await smol.render_chat(HISTORY)


def test_a_template_with_hermes_tools_renders_them_itself(smol: TorchBackend) -> None:
    encoder = encoder_with(smol, HERMES_TEMPLATE)
    assert encoder.native_tools
    rendered = encoder.render_chat(HISTORY, [WEATHER])
    assert rendered.startswith("<|im_start|>system\nFUNCTIONS:\n")
    assert json.loads(rendered.splitlines()[2]) == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
    assert (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in rendered
    )
    assert "<tool_response>Sunny, 22 C</tool_response>" in rendered
    assert "# Tools" not in rendered


def test_a_template_with_another_tool_format_gets_the_text_fallback(smol: TorchBackend) -> None:
    other = "{% if tools %}[TOOLS]{{ tools | tojson }}[/TOOLS]{% endif %}" + (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    )
    encoder = encoder_with(smol, other)
    assert not encoder.native_tools
    rendered = encoder.render_chat(HISTORY, [WEATHER])
    assert "[TOOLS]" not in rendered
    assert rendered.startswith("system: # Tools")


@pytest.mark.asyncio
@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_forced_call_is_valid_against_the_schema(
    smol: TorchBackend, temperature: float
) -> None:
    grammar = call_grammar([WEATHER, TIME], parallel=False)
    request = chat(
        "What's the weather in Paris?",
        max_tokens=80,
        tools=[WEATHER, TIME],
        constraint=GrammarConstraint(grammar=grammar),
        sampling=SamplingParams(temperature=temperature, seed=5),
    )
    text, chunks = await collect(smol, request)
    assert chunks[-1].finish_reason == "stop"
    content, calls = split_calls(text, [WEATHER, TIME])
    assert content is None
    [call] = calls
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.name].parameters
    jsonschema.validate(json.loads(call.arguments), schema)


@pytest.mark.asyncio
async def test_named_call_calls_that_function(smol: TorchBackend) -> None:
    grammar = call_grammar([TIME], parallel=True)
    request = chat(
        "What's the weather in Paris?",
        max_tokens=80,
        tools=[WEATHER, TIME],
        constraint=GrammarConstraint(grammar=grammar),
    )
    text, chunks = await collect(smol, request)
    assert chunks[-1].finish_reason == "stop"
    _, calls = split_calls(text, [WEATHER, TIME])
    assert calls and {c.name for c in calls} == {"get_time"}
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), TIME.parameters)


@pytest.mark.asyncio
async def test_grammar_literals_with_spaces_and_newlines(smol: TorchBackend) -> None:
    # SmolLM2's tokenizer spells spaces and newlines with byte-level tokens (Ġ, Ċ); the
    # grammar compiler must read those as bytes, or no token could match these literals.
    grammar = 'root ::= "The answer is:\\n" ("yes" | "no") " indeed."'
    request = chat(
        "Is Paris in France?", max_tokens=20, constraint=GrammarConstraint(grammar=grammar)
    )
    text, chunks = await collect(smol, request)
    assert text in ("The answer is:\nyes indeed.", "The answer is:\nno indeed.")
    assert chunks[-1].finish_reason == "stop"
