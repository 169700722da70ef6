"""Tool calls in the Hermes format, for every backend and every dialect.

A function call is a JSON object `{"name": ..., "arguments": {...}}` between `<tool_call>`
and `</tool_call>` lines; a function's result goes back between `<tool_response>` and
`</tool_response>`. This is the format of Hermes 2 Pro, Qwen 2.5 and later, and of SmolLM2's
own function-calling data; llama.cpp, vLLM's `hermes` parser and Ollama read it. One format
everywhere means one grammar that forces a call and one parser of calls:

- a chat template that shows tools in this format renders them itself (the backend passes
  `tools` to it);
- any other template gets `as_plain_messages`: a system section listing the tools, earlier
  calls written as `<tool_call>` blocks in the assistant's text, and results as a user turn
  of `<tool_response>` blocks (every template can show user turns; not all know `tool`);
- `call_grammar` is an llguidance (Lark dialect) grammar of one or more calls whose
  arguments validate against each tool's JSON schema (`tool_choice` required or named);
- `ToolCallParser` splits what the model wrote into text and calls, chunk by chunk.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

from gateway_schemas.canonical import ChatMessage, ToolCall, ToolDefinition

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"

Piece: TypeAlias = str | ToolCall
"""What the parser yields: text to show as content, or a complete call."""


def new_call_id() -> str:
    """An id for a call the model made, in OpenAI's shape (`call_` and 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


def arguments_value(arguments: str) -> Any:
    """The arguments of a call as data (an object) when they are JSON, else the text."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def tool_json(tool: ToolDefinition) -> str:
    """One tool as the JSON line a prompt lists (OpenAI's tool object)."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return json.dumps({"type": "function", "function": function}, ensure_ascii=False)


def tools_section(tools: Sequence[ToolDefinition]) -> str:
    """The system-prompt text that tells a model which functions it may call and how."""
    listing = "\n".join(tool_json(t) for t in tools)
    return (
        "# Tools\n\n"
        "You can call functions to help you answer. They are listed here, one JSON object "
        f"per line:\n<tools>\n{listing}\n</tools>\n\n"
        "To call a function, write a JSON object with its name and its arguments between "
        f"{CALL_OPEN} and {CALL_CLOSE}, one block per call:\n"
        f'{CALL_OPEN}\n{{"name": "<function name>", "arguments": {{<arguments>}}}}\n{CALL_CLOSE}\n'
        f"Results come back between {RESPONSE_OPEN} and {RESPONSE_CLOSE}."
    )


def call_block(call: ToolCall) -> str:
    """A call as the model writes it."""
    body = {"name": call.name, "arguments": arguments_value(call.arguments)}
    return f"{CALL_OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CALL_CLOSE}"


def as_plain_messages(
    messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition] = ()
) -> list[ChatMessage]:
    """`messages` for a chat template that knows no tools: only system, user and assistant
    turns with text content, the tools listed in the system turn."""
    plain: list[ChatMessage] = []
    for message in messages:
        if message.role == "tool":
            response = f"{RESPONSE_OPEN}\n{message.content}\n{RESPONSE_CLOSE}"
            last = plain[-1] if plain else None
            if last is not None and last.role == "user" and last.content.endswith(RESPONSE_CLOSE):
                plain[-1] = ChatMessage(role="user", content=f"{last.content}\n{response}")
            else:
                plain.append(ChatMessage(role="user", content=response))
        elif message.tool_calls:
            parts = [message.content] if message.content else []
            parts.extend(call_block(call) for call in message.tool_calls)
            plain.append(
                ChatMessage(role=message.role, content="\n".join(parts), name=message.name)
            )
        else:
            plain.append(message)
    if tools:
        section = tools_section(tools)
        if plain and plain[0].role == "system":
            first = plain[0]
            content = f"{first.content}\n\n{section}" if first.content else section
            plain[0] = ChatMessage(role="system", content=content, name=first.name)
        else:
            plain.insert(0, ChatMessage(role="system", content=section))
    return plain


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """`messages` as the dictionaries that chat templates with tool support read
    (transformers' convention: `tool_calls` with object arguments, `tool_call_id`)."""
    conversation: list[dict[str, Any]] = []
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments_value(call.arguments)},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
            if "name" not in item and message.tool_call_id in names:
                item["name"] = names[message.tool_call_id]
        conversation.append(item)
    return conversation


def template_tools(tools: Sequence[ToolDefinition]) -> list[dict[str, Any]]:
    """`tools` as the OpenAI tool objects that chat templates read."""
    return [json.loads(tool_json(tool)) for tool in tools]


# ---- the grammar of calls -------------------------------------------------------------


_SUBSCHEMA = ("items", "additionalProperties")
_SUBSCHEMA_LISTS = ("anyOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")


def _closed(schema: Any) -> Any:
    """`schema` with every object that lists `properties` but says nothing of others closed
    to them (`additionalProperties: false`), as llama.cpp's and XGrammar's converters read
    such schemas: left open, a small model fills calls with invented keys until it runs out
    of tokens. Only places where closing can only narrow what validates are followed
    (not `allOf`, `oneOf`, `not` or `if`), so every closed instance is valid originally."""
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            closed[key] = _closed(schema[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            closed[key] = [_closed(sub) for sub in schema[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            closed[key] = {name: _closed(sub) for name, sub in schema[key].items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


def _call_schema(tool: ToolDefinition) -> dict[str, Any]:
    """A JSON schema of one call's object: this tool's name, then arguments valid against
    its parameters (closed by `_closed`; their `$defs` moved up so that `#/$defs/...`
    references still resolve)."""
    parameters = _closed(dict(tool.parameters)) or {"type": "object"}
    definitions: dict[str, Any] = {
        key: parameters.pop(key) for key in ("$defs", "definitions") if key in parameters
    }
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        **definitions,
        # Compact JSON: a small model given free whitespace can loop on blank lines.
        "x-guidance": {"whitespace_flexible": False},
    }


def call_grammar(tools: Sequence[ToolDefinition], *, parallel: bool) -> str:
    """An llguidance grammar (Lark dialect) of nothing but calls to `tools`: one call, or
    with `parallel` one or more. Blocks follow each other with nothing between them: given
    a newline there, SmolLM2 goes on writing calls until it runs out of tokens, while after
    `</tool_call>` alone it ends its turn (the parser reads both)."""
    if not tools:
        raise ValueError("a call grammar needs at least one tool")
    alternatives = " | ".join(f"tool_{i}" for i in range(len(tools)))
    rules = [
        "start: call+" if parallel else "start: call",
        f'call: "{CALL_OPEN}\\n" ({alternatives}) "\\n{CALL_CLOSE}"',
    ]
    rules.extend(
        f"tool_{i}: %json {json.dumps(_call_schema(tool), ensure_ascii=False)}"
        for i, tool in enumerate(tools)
    )
    return "\n".join(rules) + "\n"


# ---- parsing what the model wrote ------------------------------------------------------


def _calls_in(body: str, names: frozenset[str]) -> list[ToolCall] | None:
    """The calls of one block's text (an object, or a list of them as SmolLM2's data
    writes them), or None when the block is not calls to known functions."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = arguments_value(arguments)
        if not isinstance(arguments, dict):
            return None
        text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        calls.append(ToolCall(id=new_call_id(), name=item["name"], arguments=text))
    return calls or None


def _partial_tail(text: str, marker: str) -> int:
    """The length of the longest end of `text` that could begin `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ToolCallParser:
    """Splits a model's output into content text and tool calls as the text streams in.

    Text that might begin a `<tool_call>` is held back until it is known; a block that is
    not a valid call to one of `tools` stays text, as written. Whitespace between text and
    calls is dropped. `limit` caps the calls kept (`parallel_tool_calls: false` keeps one).
    """

    def __init__(self, tools: Sequence[ToolDefinition], *, limit: int | None = None):
        self._names = frozenset(t.name for t in tools)
        self._limit = limit
        self._buffer = ""
        self._in_call = False
        self._pending_space = ""
        self._after_call = False
        self.calls = 0

    def feed(self, text: str) -> list[Piece]:
        """The pieces that `text` completes (possibly none yet)."""
        self._buffer += text
        out: list[Piece] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CALL_CLOSE)
                if end < 0:
                    return out
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CALL_CLOSE) :]
                self._in_call = False
                self._block(body, CALL_OPEN + body + CALL_CLOSE, out)
                continue
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                keep = _partial_tail(self._buffer, CALL_OPEN)
                cut = len(self._buffer) - keep
                self._text(self._buffer[:cut], out)
                self._buffer = self._buffer[cut:]
                return out
            self._text(self._buffer[:start], out)
            self._buffer = self._buffer[start + len(CALL_OPEN) :]
            self._in_call = True
            self._pending_space = ""

    def finish(self) -> list[Piece]:
        """The rest, once the model has stopped: an unclosed last block counts as a call
        when its JSON is complete (the model may stop right after it)."""
        out: list[Piece] = []
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._in_call = False
            self._block(rest, CALL_OPEN + rest, out)
        else:
            self._text(rest, out)
        return out

    def _block(self, body: str, raw: str, out: list[Piece]) -> None:
        calls = _calls_in(body.strip(), self._names)
        if calls is None:
            self._text(raw, out)
            return
        for call in calls:
            if self._limit is None or self.calls < self._limit:
                out.append(call)
                self.calls += 1
        self._after_call = True

    def _text(self, text: str, out: list[Piece]) -> None:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        text = self._pending_space + text
        body = text.rstrip()
        self._pending_space = text[len(body) :]
        if body:
            out.append(body)


def split_calls(
    text: str, tools: Sequence[ToolDefinition], *, limit: int | None = None
) -> tuple[str | None, list[ToolCall]]:
    """A whole output's content (None when there is none) and its calls."""
    parser = ToolCallParser(tools, limit=limit)
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p for p in pieces if isinstance(p, str))
    return content or None, [p for p in pieces if isinstance(p, ToolCall)]
