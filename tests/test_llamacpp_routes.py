"""The llama.cpp family's other routes against llama-server's README: tokenization,
/infill's prompt, embeddings, reranking, token counting, /health, and the un-prefixed
OpenAI routes with llama-server's extras (`verbose`, its samplers). EchoBackend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from gateway_schemas.llamacpp import InfillExtra

from gateway.engine import ModelSpec
from gateway.errors import NotSupported
from gateway.routes.llamacpp import prompts
from gateway.testing.echo import EchoBackend


def test_tokenize_readme_example_with_pieces(client):
    """README: 'á' (C3 A1) as byte tokens gives one piece per byte, as bytes."""
    body = client.post("/tokenize", json={"content": "á", "with_pieces": True}).json()
    assert body == {"tokens": [{"id": 195, "piece": [195]}, {"id": 161, "piece": [161]}]}
    text = client.post("/tokenize", json={"content": "ok", "with_pieces": True}).json()
    assert text == {"tokens": [{"id": 111, "piece": "o"}, {"id": 107, "piece": "k"}]}


def test_apply_template_reads_chat_bodies(client):
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
            },
        ]
    }
    prompt = client.post("/apply-template", json=body).json()["prompt"]
    assert prompt == "system: be brief\nuser: xy\nassistant:"


class FimVocabulary(EchoBackend):
    """Echo's byte tokens plus special tokens, like a code model's vocabulary."""

    SPECIAL = {"<fim_prefix>": 300, "<fim_suffix>": 301, "<fim_middle>": 302}

    def __init__(self, special: dict[str, int]):
        super().__init__(ModelSpec(name="fim", backend="echo"), Path("unused"))  # never read
        self.special = special

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        if parse_special and text in self.special:
            return [self.special[text]]
        return list(text.encode())

    async def detokenize(self, tokens: Sequence[int]) -> str:
        names = {v: k for k, v in self.special.items()}
        return "".join(names.get(t, chr(t)) for t in tokens)


def _infill(backend: FimVocabulary, extra: list[InfillExtra]) -> list[int]:
    async def run() -> list[int]:
        tokens = await prompts.fim_tokens(backend)
        return await prompts.infill_ids(
            backend, tokens, prefix="ab", suffix="cd", extra=extra, prompt="e", n_ctx=4096,
            n_predict=-1,
        )  # fmt: skip

    return asyncio.run(run())


def test_infill_prompt_with_snippets():
    backend = FimVocabulary(FimVocabulary.SPECIAL)
    ids = _infill(backend, [InfillExtra(filename="a.py", text="X")])
    snippet = list(prompts.SNIPPET.encode())
    assert ids == [*snippet, ord("X"), 300, 97, 98, 301, 99, 100, 302, ord("e")]


def test_infill_prompt_repo_level():
    special = FimVocabulary.SPECIAL | {"<|repo_name|>": 303, "<|file_sep|>": 304}
    ids = _infill(FimVocabulary(special), [InfillExtra(filename="a.py", text="X")])
    head = [303, *b"myproject\n", 304, *b"a.py\n", ord("X"), 304, *b"filename\n"]
    assert ids == [*head, 300, 97, 98, 301, 99, 100, 302, ord("e")]


def test_infill_names_the_missing_tokens():
    with pytest.raises(NotSupported) as caught:
        asyncio.run(prompts.fim_tokens(FimVocabulary({"<fim_prefix>": 300})))
    assert caught.value.message == (
        "Infill is not supported by this model: suffix token is missing. middle token is missing. "
    )


def test_infill_requires_prefix_and_suffix(client):
    response = client.post("/infill", json={"input_suffix": "x"})
    assert response.status_code == 400 and "input_prefix" in response.json()["error"]["message"]


def test_embedding_forms(client):
    by_text = client.post("/embedding", json={"content": "hi"}).json()
    by_ids = client.post("/embedding", json={"content": [104, 105]}).json()
    assert by_text == by_ids
    both = client.post("/embeddings", json={"input": ["hi", [104, 105]]}).json()
    assert [b["index"] for b in both] == [0, 1] and both[0]["embedding"] == both[1]["embedding"]
    empty = client.post("/embedding", json={"content": ""})
    assert empty.json()["error"]["message"] == "Input content cannot be empty"


def test_rerank_readme_example(make_client):
    """The README's request, verbatim (it names a model llama-server ignores)."""
    client = make_client(unknown_models="default")
    body = {
        "model": "some-model",
        "query": "What is panda?",
        "top_n": 3,
        "documents": [
            "hi",
            "it is a bear",
            "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or "
            "simply panda, is a bear species endemic to China.",
        ],
    }
    answer = client.post("/v1/rerank", json=body).json()
    assert answer["object"] == "list" and len(answer["results"]) == 3
    assert sorted(r["index"] for r in answer["results"]) == [0, 1, 2]
    assert set(answer["usage"]) == {"prompt_tokens", "total_tokens"}


def test_rerank_texts_and_return_text(client):
    answer = client.post(
        "/rerank", json={"query": "same", "texts": ["other", "same"], "return_text": True}
    ).json()
    assert answer["results"][0] == {
        "index": 1,
        "relevance_score": pytest.approx(1.0),
        "document": {"text": "same"},
    }


CHAT = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]}


def test_chat_token_count_is_the_rendered_template(client):
    counted = client.post("/v1/chat/completions/input_tokens", json=CHAT).json()
    assert counted["object"] == "response.input_tokens"
    prompt = client.post("/apply-template", json=CHAT).json()["prompt"]
    tokens = client.post("/tokenize", json={"content": prompt, "add_special": True}).json()
    assert counted["input_tokens"] == len(tokens["tokens"])
    chat = client.post("/chat/completions", json=CHAT | {"max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == counted["input_tokens"]


def test_responses_token_count(client):
    text = client.post(
        "/v1/responses/input_tokens", json={"input": "hello", "instructions": "s"}
    ).json()
    items = client.post(
        "/v1/responses/input_tokens",
        json={
            "instructions": "s",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        },
    ).json()
    chat = client.post("/v1/chat/completions/input_tokens", json=CHAT).json()
    assert text == items == chat


def test_health_in_llama_server_shape(make_client):
    ready = make_client()
    assert ready.get("/health").json()["status"] == "ok"
    loading = make_client(
        models=[ModelSpec(name="echo", backend="echo", options={"load_delay": 30})]
    )
    response = loading.get("/health")
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": 503,
        "message": "Loading model",
        "type": "unavailable_error",
    }


def test_readme_chat_example_on_the_bare_route(make_client):
    """The README's chat request, verbatim, without `/v1` (llama-server's model is any)."""
    client = make_client(unknown_models="default")
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [
            {
                "role": "system",
                "content": "You are ChatGPT, an AI assistant. Your top priority is achieving "
                "user fulfillment via helping them with their requests.",
            },
            {"role": "user", "content": "Write a limerick about python exceptions"},
        ],
    }
    answer = client.post("/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"] == "Write a limerick about python exceptions"
    assert {"timings", "usage"} <= set(answer)


def test_verbose_adds_the_native_answer(client):
    body = CHAT | {"verbose": True, "mirostat": 2, "repeat_last_n": 16, "samplers": "kt"}
    answer = client.post("/chat/completions", json=body).json()
    verbose = answer["__verbose"]
    assert verbose["content"] == "hello" and verbose["stop"] is True
    assert verbose["tokens_evaluated"] == answer["usage"]["prompt_tokens"]
    assert verbose["prompt"] == "system: s\nuser: hello\nassistant:"
    settings = verbose["generation_settings"]
    assert settings["mirostat"] == 2 and settings["repeat_last_n"] == 16
    assert settings["samplers"] == ["top_k", "temperature"]
    assert "__verbose" not in client.post("/chat/completions", json=CHAT).json()


def test_verbose_on_streams_and_completions(client):
    stream = client.post("/chat/completions", json=CHAT | {"verbose": True, "stream": True}).text
    chunks = [
        json.loads(b.removeprefix("data: "))
        for b in stream.split("\n\n")
        if b.startswith("data: {")
    ]
    ended = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(ended) == 1 and ended[0]["__verbose"]["content"] == "hello"
    assert all("__verbose" not in c for c in chunks if c not in ended)
    text = client.post("/completions", json={"prompt": "ab", "verbose": True}).json()
    assert text["__verbose"]["content"] == "ab" and text["__verbose"]["prompt"] == "ab"


def test_bare_routes_still_validate_llama_fields(client):
    response = client.post("/chat/completions", json=CHAT | {"mirostat": 5})
    assert (
        response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    )


def test_chat_token_count_includes_the_tools(client):
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = CHAT | {"tools": [tool]}
    with_tools = client.post("/v1/chat/completions/input_tokens", json=body).json()
    without = client.post("/v1/chat/completions/input_tokens", json=CHAT).json()
    assert with_tools["input_tokens"] > without["input_tokens"]
    chat = client.post("/chat/completions", json=body | {"max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == with_tools["input_tokens"]
