"""Tool calls on /v1/chat/completions, wire format on the EchoBackend.

The EchoBackend answers with the last user message, so a user message holding a
`<tool_call>` block makes the "model" call a tool; the openai SDK and LangChain run against
the test client (an httpx client) to check that they assemble what the server sends.
"""

from __future__ import annotations

import json

import openai
import pytest
from langchain_openai import ChatOpenAI
from test_openai_wire import CHAT, sse_events

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def body(text: str = CALL, **extra: object) -> dict[str, object]:
    extra.setdefault("tools", [WEATHER, TIME])
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}


def problem(response) -> dict[str, object]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_a_call_comes_back_as_tool_calls(client):
    reply = client.post(CHAT, json=body()).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert reply["usage"]["completion_tokens"] == len(CALL.encode())


def test_text_around_calls_is_content(client):
    reply = client.post(CHAT, json=body(f"Checking now.\n{CALL}")).json()
    message = reply["choices"][0]["message"]
    assert message["content"] == "Checking now."
    assert len(message["tool_calls"]) == 1


def test_plain_answers_have_no_tool_calls(client):
    reply = client.post(CHAT, json=body("Hello there")).json()
    assert reply["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there",
        "refusal": None,
    }
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_parallel_calls_and_their_limit(client):
    two = f"{CALL}\n{CALL.replace('Paris', 'Rome')}"
    calls = client.post(CHAT, json=body(two)).json()["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c["id"] for c in calls}) == 2
    one = client.post(CHAT, json=body(two, parallel_tool_calls=False)).json()
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1


def test_tool_choice_none_leaves_the_text_alone(client):
    reply = client.post(CHAT, json=body(tool_choice="none")).json()
    assert reply["choices"][0]["message"]["content"] == CALL
    assert "tool_calls" not in reply["choices"][0]["message"]
    # Without tools nothing is parsed either.
    reply = client.post(CHAT, json=body(tools=None)).json()
    assert reply["choices"][0]["message"]["content"] == CALL


def test_tools_are_rendered_into_the_prompt(client):
    def prompt_tokens(**extra: object) -> int:
        return client.post(CHAT, json=body("Hi", **extra)).json()["usage"]["prompt_tokens"]

    bare = prompt_tokens(tools=None)
    assert prompt_tokens(tool_choice="none") == bare
    with_one = prompt_tokens(tools=[WEATHER])
    assert with_one > bare + len(json.dumps(WEATHER_SCHEMA))
    assert prompt_tokens() > with_one


def test_forced_choices_are_accepted(client):
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        response = client.post(CHAT, json=body(tool_choice=choice))
        assert response.status_code == 200, response.text


def test_history_with_calls_and_results(client):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    response = client.post(CHAT, json={"model": "echo", "messages": messages, "tools": [WEATHER]})
    assert response.status_code == 200, response.text
    # The echo answers with the last user message: the question, not the tool result.
    assert response.json()["choices"][0]["message"]["content"] == "Weather in Paris?"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": {"type": "custom", "function": {"name": "get_time"}}}, "tool_choice.type"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        (
            {"tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"tool_choice": "required", "grammar": 'root ::= "x"'}, "grammar"),
    ],
)
def test_invalid_tool_fields(client, extra, param):
    error = problem(client.post(CHAT, json=body(**extra)))
    assert error["param"] == param, error


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string"},
        {"type": "object", "properties": {"city": {"type": "strang"}}},
        {"type": "object", "properties": []},
        {"type": "object", "required": "city"},
        {"type": "object", "properties": {"a": {"anyOf": {"type": "string"}}}},
        {"type": "object", "properties": {"a": {"type": "array", "items": 3}}},
        {"type": "object", "properties": {"a": json.loads('{"items":' * 40 + "{}" + "}" * 40)}},
    ],
)
def test_invalid_parameter_schemas(client, schema):
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    error = problem(client.post(CHAT, json=body(tools=[tool])))
    assert error["param"] == "tools[0].function.parameters"
    assert "`f`" in error["message"]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "Sunny"}, "messages[1].tool_call_id"),
        (
            {"role": "tool", "content": "Sunny", "tool_call_id": "call_x"},
            "messages[1].tool_call_id",
        ),
        (
            {
                "role": "user",
                "content": "hi",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "messages[1].tool_calls",
        ),
    ],
)
def test_invalid_history(client, message, param):
    messages = [{"role": "user", "content": "Weather?"}, message]
    error = problem(client.post(CHAT, json={"model": "echo", "messages": messages}))
    assert error["param"] == param


def tool_deltas(events: list[object]) -> list[dict[str, object]]:
    return [
        call
        for e in events
        if isinstance(e, dict)
        for choice in e["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]


def test_streamed_calls(client):
    text = f"One moment.\n{CALL}\n{CALL.replace('Paris', 'Rome')}"
    response = client.post(
        CHAT, json=body(text, stream=True, stream_options={"include_usage": True})
    )
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    contents = [
        c["delta"]["content"]
        for e in events[:-1]
        for c in e["choices"]
        if c["delta"].get("content")
    ]
    assert "".join(contents) == "One moment."
    deltas = tool_deltas(events)
    assert [d["index"] for d in deltas] == [0, 0, 1, 1]
    assert deltas[0]["type"] == "function" and deltas[0]["id"].startswith("call_")
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert set(deltas[1]) == {"index", "function"}
    assert json.loads(deltas[3]["function"]["arguments"]) == {"city": "Rome"}
    finishes = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert events[-2]["usage"]["completion_tokens"] == len(text.encode())


def test_streamed_plain_text_is_unchanged(client):
    response = client.post(CHAT, json=body("Hello <there>", stream=True))
    events = sse_events(response.text)
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e["choices"])
    assert text == "Hello <there>"
    assert not tool_deltas(events)
    assert [c["finish_reason"] for e in events[:-1] for c in e["choices"]][-1] == "stop"


def test_streamed_n_choices_each_have_their_calls(client):
    response = client.post(CHAT, json=body(n=2, stream=True))
    events = sse_events(response.text)
    by_choice: dict[int, list[object]] = {0: [], 1: []}
    for event in events[:-1]:
        for choice in event["choices"]:
            by_choice[choice["index"]] += choice["delta"].get("tool_calls", [])
    assert all(len(calls) == 2 for calls in by_choice.values())


@pytest.fixture
def sdk(client) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="none", http_client=client)


def test_sdk_assembles_streamed_calls(sdk):
    text = f"{CALL}{CALL.replace('Paris', 'Rome')}"
    with sdk.chat.completions.stream(
        model="echo", messages=[{"role": "user", "content": text}], tools=[WEATHER]
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]


def test_sdk_sends_history_back(sdk):
    first = sdk.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": CALL}], tools=[WEATHER]
    )
    message = first.choices[0].message
    history = [
        {"role": "user", "content": CALL},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Sunny"},
        {"role": "user", "content": "Thanks"},
    ]
    second = sdk.chat.completions.create(model="echo", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "Thanks"


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "Sunny"


def test_langchain_bind_tools(client):
    llm = ChatOpenAI(
        model="echo", base_url=f"{client.base_url}/v1", api_key="none", http_client=client
    )
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    reply = bound.invoke(CALL)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    merged = None
    for chunk in bound.stream(CALL):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert merged.response_metadata["finish_reason"] == "tool_calls"
