"""Token counting as llama-server serves it: `/v1/chat/completions/input_tokens` (a chat
completion body) and `/v1/responses/input_tokens` (a Responses body) answer
`{"object": "response.input_tokens", "input_tokens": N}`: the tokens of the prompt the
model's chat template makes of the conversation, as a chat completion would read it.
"""

from __future__ import annotations

from gateway_schemas.canonical import ChatMessage
from gateway_schemas.llamacpp import ResponsesItem, ResponsesTokenCountRequest
from gateway_schemas.openai import ChatCompletionRequest

from gateway.engine import Backend
from gateway.errors import InvalidRequest, Unsupported
from gateway.routes.openai import tools as openai_tools
from gateway.routes.openai import translate as openai

TEXT_PARTS = {"input_text", "output_text", "text"}


async def rendered_chat(backend: Backend, body: ChatCompletionRequest, model: str) -> str:
    """The prompt text of a chat completion body (its tools included), as the chat route
    renders it."""
    request = openai.chat_requests(body, "template", model, openai_tools.plan(body))[0]
    if request.tools:
        return await backend.render_chat(request.messages or [], tools=request.tools)
    return await backend.render_chat(request.messages or [])


async def prompt_tokens(backend: Backend, text: str) -> int:
    """How many tokens a rendered chat is: its tokens, with the tokenizer's own prefix
    (BOS) once, unless the template already wrote it."""
    ids = await backend.tokenize(text, add_special=False, parse_special=True)
    prefix = await backend.tokenize("", add_special=True)
    if prefix and ids[: len(prefix)] != prefix:
        ids = prefix + ids
    return len(ids)


def responses_messages(body: ResponsesTokenCountRequest) -> list[ChatMessage]:
    """A Responses `input` (and `instructions`) as chat messages."""
    messages = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        return [*messages, ChatMessage(role="user", content=body.input)]
    if not body.input:
        raise InvalidRequest("`input` must not be empty.", param="input")
    return messages + [_item_message(i, item) for i, item in enumerate(body.input)]


def _item_message(index: int, item: ResponsesItem) -> ChatMessage:
    if item.type == "function_call_output":
        return ChatMessage(role="tool", content=item.output)
    if item.type != "message":
        raise Unsupported(
            f"Input items of type `{item.type}` are not supported.", param=f"input[{index}]"
        )
    if isinstance(item.content, str):
        return ChatMessage(role=_role(item.role), content=item.content)
    unknown = [p.type for p in item.content if p.type not in TEXT_PARTS]
    if unknown:
        raise Unsupported(
            f"Content parts of type `{unknown[0]}` are not supported: this model reads text only.",
            param=f"input[{index}].content",
        )
    return ChatMessage(role=_role(item.role), content="".join(p.text for p in item.content))


def _role(role: str) -> str:
    return "system" if role == "developer" else role
