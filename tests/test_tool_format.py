"""The Hermes tool-call format of gateway.engine.tools: prompt text, grammar, parser."""

from __future__ import annotations

import json

import pytest
from gateway_schemas.canonical import ChatMessage, ToolCall, ToolDefinition

from gateway.engine.tools import (
    ToolCallParser,
    as_plain_messages,
    call_grammar,
    split_calls,
    template_messages,
)

WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
TIME = ToolDefinition(name="get_time", parameters={"type": "object"})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_plain_messages_list_tools_in_the_system_turn():
    plain = as_plain_messages([ChatMessage(role="user", content="Hi")], [WEATHER, TIME])
    assert [m.role for m in plain] == ["system", "user"]
    system = plain[0].content
    assert "<tools>" in system and "</tools>" in system
    listed = system.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line)["function"]["name"] for line in listed] == ["get_weather", "get_time"]
    assert json.loads(listed[0])["function"]["parameters"] == WEATHER.parameters
    # An existing system message keeps its text, the tools come after it.
    plain = as_plain_messages(
        [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")],
        [WEATHER],
    )
    assert len(plain) == 2
    assert plain[0].content.startswith("Be brief.\n\n# Tools")


def test_plain_messages_write_calls_and_results_as_text():
    history = [
        ChatMessage(role="user", content="Weather in Paris and Rome?"),
        ChatMessage(
            role="assistant",
            content="Checking.",
            tool_calls=[
                ToolCall(id="a", name="get_weather", arguments='{"city":"Paris"}'),
                ToolCall(id="b", name="get_weather", arguments='{"city":"Rome"}'),
            ],
        ),
        ChatMessage(role="tool", content="Sunny", tool_call_id="a"),
        ChatMessage(role="tool", content="Rain", tool_call_id="b"),
    ]
    plain = as_plain_messages(history)
    assert [m.role for m in plain] == ["user", "assistant", "user"]
    assert not any(m.tool_calls for m in plain)
    assistant = plain[1].content
    assert assistant.startswith("Checking.\n<tool_call>\n")
    content, calls = split_calls(assistant, [WEATHER])
    assert content == "Checking."
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert plain[2].content == (
        "<tool_response>\nSunny\n</tool_response>\n<tool_response>\nRain\n</tool_response>"
    )


def test_template_messages_follow_the_transformers_convention():
    history = [
        ChatMessage(
            role="assistant", tool_calls=[ToolCall(id="a", name="get_time", arguments="{}")]
        ),
        ChatMessage(role="tool", content="noon", tool_call_id="a"),
    ]
    assert template_messages(history) == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_time", "arguments": {}}}
            ],
        },
        {"role": "tool", "content": "noon", "tool_call_id": "a", "name": "get_time"},
    ]


def test_call_grammar_has_one_rule_per_tool_with_its_schema():
    grammar = call_grammar([WEATHER, TIME], parallel=True)
    lines = grammar.splitlines()
    assert lines[0] == "start: call+"
    assert lines[1] == 'call: "<tool_call>\\n" (tool_0 | tool_1) "\\n</tool_call>"'
    schema = json.loads(lines[2].removeprefix("tool_0: %json "))
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == {
        **WEATHER.parameters,
        "additionalProperties": False,
    }
    assert schema["required"] == ["name", "arguments"]
    assert call_grammar([TIME], parallel=False).splitlines()[0] == "start: call"


def test_call_grammar_closes_objects_that_list_their_properties():
    open_list = {"type": "object", "properties": {"x": {"type": "integer"}}}
    tool = ToolDefinition(
        name="f",
        parameters={
            "type": "object",
            "properties": {
                "inner": open_list,
                "items": {"type": "array", "items": open_list},
                "either": {"anyOf": [open_list, {"type": "null"}]},
                "free": {**open_list, "additionalProperties": True},
                "both": {"allOf": [open_list]},
                "anything": {"type": "object"},
            },
        },
    )
    line = call_grammar([tool], parallel=False).splitlines()[2]
    arguments = json.loads(line.split("%json ")[1])["properties"]["arguments"]
    closed = {**open_list, "additionalProperties": False}
    assert arguments["additionalProperties"] is False
    properties = arguments["properties"]
    assert properties["inner"] == closed
    assert properties["items"]["items"] == closed
    assert properties["either"]["anyOf"][0] == closed
    assert properties["free"]["additionalProperties"] is True
    assert properties["both"] == {"allOf": [open_list]}
    assert properties["anything"] == {"type": "object"}
    assert "additionalProperties" not in tool.parameters  # the tool itself is unchanged


def test_call_grammar_moves_definitions_to_the_root():
    tool = ToolDefinition(
        name="f",
        parameters={
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/P"}},
            "$defs": {"P": {"type": "integer"}},
        },
    )
    schema = json.loads(call_grammar([tool], parallel=False).splitlines()[2].split("%json ")[1])
    assert schema["$defs"] == {"P": {"type": "integer"}}
    assert "$defs" not in schema["properties"]["arguments"]


def test_split_calls_separates_text_and_calls():
    content, calls = split_calls(f"Let me look.\n{CALL}\n", [WEATHER])
    assert content == "Let me look."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city":"Paris"}')]
    assert calls[0].id.startswith("call_") and len(calls[0].id) == 29
    assert split_calls("Just text.", [WEATHER]) == ("Just text.", [])
    assert split_calls(CALL, [WEATHER])[0] is None


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call>',  # not offered
        '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',  # not an object
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut off
    ],
)
def test_blocks_that_are_not_valid_calls_stay_text(text):
    assert split_calls(text, [WEATHER]) == (text, [])


def test_parser_reads_variants_of_the_format():
    # Unclosed at the end, `parameters` for `arguments`, arguments as a JSON string,
    # a list of calls in one block (SmolLM2's data), blocks without a newline between.
    unclosed = '<tool_call>{"name": "get_time", "parameters": {}}'
    assert [c.name for c in split_calls(unclosed, [TIME])[1]] == ["get_time"]
    as_string = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    assert split_calls(as_string, [WEATHER])[1][0].arguments == '{"city":"Oslo"}'
    listed = '<tool_call>[{"name": "get_time", "arguments": {}}, {"name": "get_weather", '
    listed += '"arguments": {"city": "Rome"}}]</tool_call>'
    assert [c.name for c in split_calls(listed, [WEATHER, TIME])[1]] == ["get_time", "get_weather"]
    assert len(split_calls(CALL + CALL, [WEATHER])[1]) == 2


def test_limit_keeps_the_first_calls():
    content, calls = split_calls(CALL + "\n" + CALL, [WEATHER], limit=1)
    assert content is None and len(calls) == 1


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_streamed_pieces_match_the_whole(size):
    text = f"Sure < 3.\n{CALL}\n{CALL} done <tool"
    parser = ToolCallParser([WEATHER])
    pieces = []
    for start in range(0, len(text), size):
        pieces += parser.feed(text[start : start + size])
    pieces += parser.finish()
    streamed = "".join(p for p in pieces if isinstance(p, str))
    content, calls = split_calls(text, [WEATHER])
    assert streamed == content == "Sure < 3.done <tool"
    assert [p.arguments for p in pieces if isinstance(p, ToolCall)] == [c.arguments for c in calls]
    assert parser.calls == 2


def test_text_that_may_open_a_call_is_held_back():
    parser = ToolCallParser([WEATHER])
    assert parser.feed("Hello <tool_") == ["Hello"]
    assert parser.feed("x") == [" <tool_x"]
