"""The official `openai` SDK, sync and async, against `gateway serve` on the real default models."""

from __future__ import annotations

import math
import re
import time

import httpx
import openai
import pytest

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
NO_EOS = {"2": -100}  # SmolLM2's <|im_end|>: keeps the model talking


@pytest.fixture(scope="module")
def sdk(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture
def async_sdk(live_server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)


def test_serve_says_where_it_listens_and_what_is_mounted(live_server):
    output = live_server.output()
    assert f"listening on {live_server.url}" in output
    assert (
        "route families mounted: adapters, distillation, health, kobold, llamacpp, metrics, models,"
        " openai, stats, training" in output
    )
    assert "no API keys are configured" in output


def test_models(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert ids[:2] == [CHAT_MODEL, EMBED_MODEL]


def test_chat_answers_paris(sdk):
    reply = sdk.chat.completions.create(
        model=CHAT_MODEL, messages=FRANCE, temperature=0, max_tokens=30
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    # The prompt as the model's chat template renders it, counted by its tokenizer.
    assert 20 < usage.prompt_tokens < 60
    assert 1 <= usage.completion_tokens <= 30
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_async_chat_answers_paris(async_sdk):
    reply = await async_sdk.chat.completions.create(
        model=CHAT_MODEL, messages=FRANCE, temperature=0, max_tokens=30
    )
    assert "Paris" in reply.choices[0].message.content


def test_streamed_chat(sdk):
    stream = sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=FRANCE,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 2
    assert "Paris" in "".join(deltas)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens >= len(deltas)


async def test_async_stream_same_text_as_non_streamed(async_sdk):
    kwargs = {"model": CHAT_MODEL, "messages": FRANCE, "temperature": 0, "max_tokens": 20}
    whole = await async_sdk.chat.completions.create(**kwargs)
    stream = await async_sdk.chat.completions.create(**kwargs, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content


def test_seed_reproducible_and_max_tokens(sdk):
    kwargs = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "temperature": 1.0,
        "seed": 1234,
        "max_tokens": 12,
    }
    first = sdk.chat.completions.create(**kwargs)
    second = sdk.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 12


def test_n_choices_and_logprobs(sdk):
    reply = sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=FRANCE,
        n=2,
        max_tokens=5,
        seed=7,
        logprobs=True,
        top_logprobs=3,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    content = reply.choices[0].logprobs.content
    assert 1 <= len(content) <= 5
    for token in content:
        assert token.logprob <= 0
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)


def test_stop_sequence(sdk):
    reply = sdk.chat.completions.create(
        model=CHAT_MODEL, messages=FRANCE, temperature=0, max_tokens=30, stop=["Paris"]
    )
    assert "Paris" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_text_completion(sdk):
    reply = sdk.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, echo=True
    )
    assert reply.choices[0].text.startswith("The capital of France is")
    assert "Paris" in reply.choices[0].text
    assert reply.usage.prompt_tokens == 5


def test_embeddings(sdk):
    response = sdk.embeddings.create(
        model=EMBED_MODEL, input=["a cat", "a kitten", "a stock market crash"]
    )
    cat, kitten, crash = (d.embedding for d in response.data)
    assert len(cat) == 384

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b)
        )

    assert cosine(cat, kitten) > cosine(cat, crash)
    assert response.usage.prompt_tokens > 6


async def test_async_embeddings(async_sdk):
    response = await async_sdk.embeddings.create(model=EMBED_MODEL, input="a cat")
    assert len(response.data[0].embedding) == 384


def test_unknown_model_raises_not_found(sdk):
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert info.value.body["code"] == "model_not_found"


async def test_async_unknown_model_raises_not_found(async_sdk):
    with pytest.raises(openai.NotFoundError):
        await async_sdk.embeddings.create(model="no-such-model", input="x")


def test_bad_request_raises_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, top_p=3)
    assert info.value.body["param"] == "top_p"


def test_embedding_model_refuses_chat(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=EMBED_MODEL, messages=FRANCE)
    assert "does not generate text" in info.value.message


async def test_concurrent_requests_are_all_served(async_sdk):
    import asyncio

    questions = ["What is the capital of France?", "Name a color.", "Say hello.", "Count to three."]
    replies = await asyncio.gather(
        *(
            async_sdk.chat.completions.create(
                model=CHAT_MODEL,
                messages=[{"role": "user", "content": q}],
                temperature=0,
                max_tokens=12,
            )
            for q in questions
        )
    )
    alone = await async_sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": questions[0]}],
        temperature=0,
        max_tokens=12,
    )
    assert all(r.choices[0].message.content for r in replies)
    assert replies[0].choices[0].message.content == alone.choices[0].message.content


def test_prompt_cache_reports_cached_tokens_and_timings(live_server):
    system = {"role": "system", "content": "You answer in one short sentence. " * 20}
    body = {"model": CHAT_MODEL, "temperature": 0, "max_tokens": 8}
    url = f"{live_server.url}/v1/chat/completions"
    first = httpx.post(
        url, json=body | {"messages": [system, {"role": "user", "content": "Name a fruit."}]}
    ).json()
    second = httpx.post(
        url, json=body | {"messages": [system, {"role": "user", "content": "Name a tree."}]}
    ).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 100
    assert second["timings"]["cache_n"] == cached
    assert second["timings"]["prompt_n"] == second["usage"]["prompt_tokens"] - cached
    assert first["timings"]["predicted_n"] == first["usage"]["completion_tokens"]
    assert second["timings"]["predicted_per_second"] > 0


def test_response_format_json_schema(sdk):
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"enum": ["France", "Italy", "Spain"]},
            "landmarks": {
                "type": "array",
                "items": {"type": "string", "maxLength": 30},
                "maxItems": 2,
            },
        },
        "required": ["city", "country", "landmarks"],
        "additionalProperties": False,
    }
    reply = sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Tell me about Paris as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=200,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    plain = sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about Paris."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=400,
    )
    assert plain.choices[0].finish_reason == "stop"  # the grammar closed the object
    assert isinstance(json.loads(plain.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=CHAT_MODEL,
            messages=FRANCE,
            extra_body={"grammar": "root ::= missing"},
        )
    assert "Invalid grammar" in info.value.message


def generated_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'gateway_generated_tokens_total{{model="{CHAT_MODEL}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_client_disconnect_stops_generation(live_server):
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 4000,
        "logit_bias": NO_EOS,
        "stream": True,
    }
    before = generated_tokens(live_server.url)
    url = f"{live_server.url}/v1/chat/completions"
    with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(10)]
        assert all(line.startswith("data: ") or not line for line in received)
    # The server notices the disconnect and the engine drops the sequence: the counter
    # settles far below the 4000 tokens the request asked for.
    settled, last = None, -1.0
    for _ in range(120):
        time.sleep(0.5)
        now = generated_tokens(live_server.url)
        if now == last:
            settled = now
            break
        last = now
    assert settled is not None, "generation kept going after the client left"
    assert settled - before < 1000
    health = httpx.get(f"{live_server.url}/health").json()
    chat = next(m for m in health["models"] if m["name"] == CHAT_MODEL)
    assert chat["active"] == 0
