"""Tool calls with the openai SDK and LangChain against `gateway serve` on the real SmolLM2.

Forced calls (`required`, a named function) are constrained by a grammar, so their
arguments must validate against each tool's schema at any temperature. SmolLM2-135M does
not call tools on its own from a plain question; shown two earlier calls in the history it
writes a third one in the Hermes format, which `auto` must parse.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

CHAT_MODEL = "smollm2-135m-instruct"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TIME_SCHEMA = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time in a timezone",
            "parameters": TIME_SCHEMA,
        },
    },
]
PARIS = [{"role": "user", "content": "What's the weather in Paris?"}]
SHORT = {"model": CHAT_MODEL, "max_tokens": 80}


@pytest.fixture(scope="module")
def sdk(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)


def check_calls(calls, names=frozenset(SCHEMAS)) -> list[dict[str, object]]:
    """Each call is to one of `names` with arguments valid against its schema."""
    assert calls, "no tool calls"
    arguments = []
    for call in calls:
        assert call.id.startswith("call_")
        assert call.type == "function"
        assert call.function.name in names
        value = json.loads(call.function.arguments)
        jsonschema.validate(value, SCHEMAS[call.function.name])
        arguments.append(value)
    return arguments


def test_required_answers_with_valid_calls(sdk):
    reply = sdk.chat.completions.create(
        messages=PARIS, tools=TOOLS, tool_choice="required", temperature=0, **SHORT
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    check_calls(choice.message.tool_calls)
    bare = sdk.chat.completions.create(
        messages=PARIS, temperature=0, max_tokens=1, model=CHAT_MODEL
    )
    assert reply.usage.prompt_tokens > bare.usage.prompt_tokens + 50  # the tools were shown


@pytest.mark.parametrize("seed", [1, 2])
def test_required_single_call_when_sampling(sdk, seed):
    reply = sdk.chat.completions.create(
        messages=PARIS,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=seed,
        **SHORT,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert len(check_calls(reply.choices[0].message.tool_calls)) == 1


def test_named_function_is_the_one_called(sdk):
    reply = sdk.chat.completions.create(
        messages=PARIS,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        **SHORT,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    check_calls(reply.choices[0].message.tool_calls, names={"get_time"})


def test_auto_answers_in_text_when_it_calls_nothing(sdk):
    reply = sdk.chat.completions.create(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        tools=TOOLS,
        temperature=0,
        **SHORT,
    )
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"


def weather_turn(n: int, city: str, result: str) -> list[dict[str, object]]:
    call_id = f"call_{n}"
    arguments = json.dumps({"city": city})
    return [
        {"role": "user", "content": f"What's the weather in {city}?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": result},
        {"role": "assistant", "content": f"It is {result.lower()} in {city}."},
    ]


FEW_SHOT = [  # three examples: with two, the default model's int8 graph answers in prose
    *weather_turn(1, "Paris", "Sunny"),
    *weather_turn(2, "Oslo", "Snowing"),
    *weather_turn(3, "Lima", "Cloudy"),
    {"role": "user", "content": "What's the weather in Rome?"},
]


def test_auto_parses_the_call_the_model_writes(sdk):
    reply = sdk.chat.completions.create(messages=FEW_SHOT, tools=TOOLS, temperature=0, **SHORT)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert check_calls(choice.message.tool_calls) == [{"city": "Rome"}]
    assert choice.message.tool_calls[0].function.name == "get_weather"


def test_auto_streams_the_call_the_model_writes(sdk):
    with sdk.chat.completions.stream(
        messages=FEW_SHOT, tools=TOOLS, temperature=0, **SHORT
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert check_calls(final.choices[0].message.tool_calls) == [{"city": "Rome"}]


def test_streamed_required_call(sdk):
    chunks = list(
        sdk.chat.completions.create(
            messages=PARIS,
            tools=TOOLS,
            tool_choice="required",
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            **SHORT,
        )
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name in SCHEMAS
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 10
    by_index: dict[int, dict[str, str]] = {}
    for delta in deltas:
        call = by_index.setdefault(delta.index, {"name": "", "arguments": ""})
        call["name"] += delta.function.name or ""
        call["arguments"] += delta.function.arguments or ""
    for call in by_index.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_two_turns_with_a_tool_result(sdk):
    first = sdk.chat.completions.create(
        messages=PARIS,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        temperature=0,
        **SHORT,
    )
    message = first.choices[0].message
    [call] = message.tool_calls
    history = [
        *PARIS,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 22 degrees celsius"},
    ]
    second = sdk.chat.completions.create(messages=history, tools=TOOLS, temperature=0, **SHORT)
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    # The call and its result are part of the second prompt.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city", max_length=30)


def get_time(timezone: str) -> str:
    """Get the current time in a timezone."""
    return "noon"


@pytest.fixture(scope="module")
def llm(live_server) -> ChatOpenAI:
    return ChatOpenAI(
        model=CHAT_MODEL,
        base_url=f"{live_server.url}/v1",
        api_key="none",
        temperature=0,
        max_tokens=80,
        max_retries=0,
    )


def test_langchain_bind_tools_required(llm):
    bound = llm.bind_tools([GetWeather, get_time], tool_choice="required")
    reply = bound.invoke("What's the weather in Paris?")
    assert reply.tool_calls
    for call in reply.tool_calls:
        assert call["name"] in ("GetWeather", "get_time")
        if call["name"] == "GetWeather":
            jsonschema.validate(call["args"], GetWeather.model_json_schema())
            GetWeather(**call["args"])
        else:
            assert set(call["args"]) == {"timezone"}
            assert isinstance(call["args"]["timezone"], str)
    assert reply.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_bind_tools_named_stream(llm):
    bound = llm.bind_tools([GetWeather, get_time], tool_choice="GetWeather")
    merged: AIMessageChunk | None = None
    for chunk in bound.stream("What's the weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.tool_calls
    for call in merged.tool_calls:
        assert call["name"] == "GetWeather"
        jsonschema.validate(call["args"], GetWeather.model_json_schema())
    assert merged.response_metadata["finish_reason"] == "tool_calls"
