"""OpenAI tool calling on chat completions: `tools`, `tool_choice` and
`parallel_tool_calls` in; `message.tool_calls`, streamed `delta.tool_calls` and
`finish_reason: "tool_calls"` out; assistant `tool_calls` and `tool` messages in the history.

The format the model reads and writes, the grammar that forces a call and the parser of
calls live in `gateway.engine.tools`; this module maps OpenAI's wire shapes onto them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway_schemas.canonical import GrammarConstraint, ToolCall, ToolDefinition
from gateway_schemas.openai import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessageIn,
    Delta,
    FunctionCallOut,
    FunctionDelta,
    NamedToolChoice,
    ResponseFormatText,
    ToolCallDelta,
    ToolCallOut,
    ToolIn,
)

from gateway.engine.tools import ToolCallParser, call_grammar, split_calls
from gateway.errors import InvalidRequest

_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
MAX_SCHEMA_DEPTH = 32


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tool fields mean for one generation."""

    tools: list[ToolDefinition] = field(default_factory=list)
    """Rendered into the prompt."""
    constraint: GrammarConstraint | None = None
    """Set when the answer must be calls (`required`, or a named function)."""
    parse: bool = False
    """Split the output into content and calls."""
    limit: int | None = None
    """At most this many calls (`parallel_tool_calls: false`: one)."""

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.tools, limit=self.limit)


NO_TOOLS = ToolPlan()


# ---- request ---------------------------------------------------------------------------


def plan(body: ChatCompletionRequest) -> ToolPlan:
    """Validate the tool fields of `body` and decide what they ask for."""
    tools = [_definition(i, tool) for i, tool in enumerate(body.tools or [])]
    names = [t.name for t in tools]
    for name in names:
        if names.count(name) > 1:
            raise InvalidRequest(f"Two tools are named `{name}`.", param="tools")
    choice = body.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, NamedToolChoice):
        return _named(body, tools, choice)
    return _CHOICES[choice](body, tools)


def _definition(index: int, tool: ToolIn) -> ToolDefinition:
    if tool.type != "function":
        raise InvalidRequest(
            f"Tools of type `{tool.type}` are not supported; use `function`.",
            param=f"tools[{index}].type",
        )
    if tool.function is None:
        raise InvalidRequest("Missing required field `function`.", param=f"tools[{index}].function")
    parameters = tool.function.parameters
    param = f"tools[{index}].function.parameters"
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    elif parameters.get("type", "object") != "object":
        raise InvalidRequest(
            f"The parameters of `{tool.function.name}` must be a JSON schema of type `object`.",
            param=param,
        )
    problem = _schema_problem(parameters, "parameters")
    if problem:
        raise InvalidRequest(
            f"Invalid JSON schema for `{tool.function.name}`: {problem}", param=param
        )
    return ToolDefinition(
        name=tool.function.name,
        description=tool.function.description or "",
        parameters=parameters,
    )


def _schema_problem(schema: object, where: str, depth: int = 0) -> str | None:
    """The first structural error of a JSON schema (keywords of the wrong kind), or None."""
    if depth > MAX_SCHEMA_DEPTH:
        return f"`{where}` is nested more than {MAX_SCHEMA_DEPTH} schemas deep."
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"`{where}` must be a schema (an object), not {json.dumps(schema)}."
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is not None and not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
        return f"`{where}.type` must be one of {', '.join(sorted(_JSON_TYPES))}."
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return f"`{where}.required` must be a list of property names."
    if "enum" in schema and not isinstance(schema["enum"], list):
        return f"`{where}.enum` must be a list."
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        members = schema.get(key, {})
        if not isinstance(members, dict):
            return f"`{where}.{key}` must be an object of schemas."
        for name, sub in members.items():
            if problem := _schema_problem(sub, f"{where}.{key}.{name}", depth + 1):
                return problem
    for key in ("items", "additionalProperties", "not", "contains"):
        sub = schema.get(key, True)
        if problem := _schema_problem(sub, f"{where}.{key}", depth + 1):
            return problem
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        subs = schema.get(key, [])
        if not isinstance(subs, list):
            return f"`{where}.{key}` must be a list of schemas."
        for i, sub in enumerate(subs):
            if problem := _schema_problem(sub, f"{where}.{key}[{i}]", depth + 1):
                return problem
    return None


def _limit(body: ChatCompletionRequest) -> int | None:
    return None if body.parallel_tool_calls else 1


def _none(body: ChatCompletionRequest, tools: list[ToolDefinition]) -> ToolPlan:
    """`none`: the model answers in text; the tools are not shown to it."""
    return NO_TOOLS


def _auto(body: ChatCompletionRequest, tools: list[ToolDefinition]) -> ToolPlan:
    """`auto`: the model sees the tools and may call them or answer in text."""
    if not tools:
        return NO_TOOLS
    return ToolPlan(tools=tools, parse=True, limit=_limit(body))


def _required(body: ChatCompletionRequest, tools: list[ToolDefinition]) -> ToolPlan:
    """`required`: the answer is one or more calls, to any of the tools."""
    return _forced(body, tools, tools)


def _named(
    body: ChatCompletionRequest, tools: list[ToolDefinition], choice: NamedToolChoice
) -> ToolPlan:
    """A named function: the answer is calls to that function."""
    if choice.type != "function":
        raise InvalidRequest(
            f"`tool_choice` of type `{choice.type}` is not supported; use `function`.",
            param="tool_choice.type",
        )
    chosen = [t for t in tools if t.name == choice.function.name]
    if not chosen:
        offered = ", ".join(f"`{t.name}`" for t in tools) or "none"
        raise InvalidRequest(
            f"`tool_choice` names the function `{choice.function.name}`, which is not among "
            f"`tools` (offered: {offered}).",
            param="tool_choice",
        )
    return _forced(body, tools, chosen)


def _forced(
    body: ChatCompletionRequest, tools: list[ToolDefinition], allowed: list[ToolDefinition]
) -> ToolPlan:
    if not tools:
        raise InvalidRequest(
            "`tool_choice` asks for a tool call, but no `tools` are given.", param="tool_choice"
        )
    for name in ("response_format", "grammar", "json_schema"):
        value = getattr(body, name)
        if value is not None and not isinstance(value, ResponseFormatText):
            raise InvalidRequest(
                f"`{name}` cannot be combined with a `tool_choice` that forces a call.",
                param=name,
            )
    grammar = call_grammar(allowed, parallel=body.parallel_tool_calls)
    return ToolPlan(
        tools=tools,
        constraint=GrammarConstraint(grammar=grammar),
        parse=True,
        limit=_limit(body),
    )


_CHOICES: dict[str, Callable[[ChatCompletionRequest, list[ToolDefinition]], ToolPlan]] = {
    "none": _none,
    "auto": _auto,
    "required": _required,
}


def history_calls(index: int, message: ChatMessageIn) -> list[ToolCall]:
    """The calls of an assistant turn in the history, arguments as JSON text."""
    calls = []
    for k, call in enumerate(message.tool_calls or []):
        if message.role != "assistant":
            raise InvalidRequest(
                "Only assistant messages have `tool_calls`.", param=f"messages[{index}].tool_calls"
            )
        if call.type != "function":
            raise InvalidRequest(
                f"Tool calls of type `{call.type}` are not supported.",
                param=f"messages[{index}].tool_calls[{k}].type",
            )
        arguments = call.function.arguments
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append(ToolCall(id=call.id, name=call.function.name, arguments=text))
    return calls


def check_tool_results(messages: Sequence[ChatMessageIn]) -> None:
    """Every `tool` message answers a call that an earlier assistant turn made."""
    made: set[str] = set()
    for index, message in enumerate(messages):
        made.update(call.id for call in message.tool_calls or [])
        if message.role != "tool":
            continue
        if message.tool_call_id is None:
            raise InvalidRequest(
                "A `tool` message needs the `tool_call_id` of the call it answers.",
                param=f"messages[{index}].tool_call_id",
            )
        if message.tool_call_id not in made:
            raise InvalidRequest(
                f"The `tool` message answers `{message.tool_call_id}`, which no earlier "
                "assistant message's `tool_calls` made.",
                param=f"messages[{index}].tool_call_id",
            )


# ---- response --------------------------------------------------------------------------


def _call_out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(
        id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments)
    )


def _finish(reason: str | None, called: bool) -> str | None:
    """`tool_calls` when the model stopped after calling; a cut-off answer stays `length`."""
    return "tool_calls" if called and reason == "stop" else reason


def reply(
    tool_plan: ToolPlan, text: str, reason: str | None
) -> tuple[AssistantMessage, str | None]:
    """The message and finish reason of a whole answer (`reason` in OpenAI's words)."""
    if not tool_plan.parse:
        return AssistantMessage(content=text), reason
    content, calls = split_calls(text, tool_plan.tools, limit=tool_plan.limit)
    if not calls:
        return AssistantMessage(content=content or ""), reason
    message = AssistantMessage(content=content, tool_calls=[_call_out(c) for c in calls])
    return message, _finish(reason, True)


class DeltaStream:
    """One streamed choice's deltas: content as it comes, each call once it is complete
    (its id, type and name first, then its arguments), as OpenAI streams them."""

    def __init__(self, tool_plan: ToolPlan):
        self._parser = tool_plan.parser() if tool_plan.parse else None
        self.called = False

    def feed(self, text: str) -> list[Delta]:
        if self._parser is None:
            return [Delta(content=text)]
        return self._deltas(self._parser.feed(text))

    def finish(self, reason: str | None) -> tuple[list[Delta], str | None]:
        """The last deltas of the choice and its finish reason (in OpenAI's words)."""
        if self._parser is None:
            return [], reason
        deltas = self._deltas(self._parser.finish())
        return deltas, _finish(reason, self.called)

    def _deltas(self, pieces: Sequence[str | ToolCall]) -> list[Delta]:
        assert self._parser is not None
        deltas = []
        index = self._parser.calls - sum(isinstance(p, ToolCall) for p in pieces)
        for piece in pieces:
            if isinstance(piece, str):
                deltas.append(Delta(content=piece))
                continue
            self.called = True
            opening = ToolCallDelta(
                index=index,
                id=piece.id,
                type="function",
                function=FunctionDelta(name=piece.name, arguments=""),
            )
            arguments = ToolCallDelta(
                index=index, function=FunctionDelta(arguments=piece.arguments)
            )
            deltas += [Delta(tool_calls=[opening]), Delta(tool_calls=[arguments])]
            index += 1
        return deltas
