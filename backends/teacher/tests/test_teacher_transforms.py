"""The pure transforms, without a network: canonical requests to upstream bodies, upstream
events to canonical chunks, server-sent events, and prices."""

from __future__ import annotations

import json

import pytest
from gateway_schemas.canonical import (
    AdapterRef,
    ChatMessage,
    GenerationRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
    SamplingParams,
    ToolCall,
    ToolDefinition,
)
from gateway_teacher.prices import PriceTable
from gateway_teacher.settings import Price
from gateway_teacher.sse import SseParser
from gateway_teacher.transform import (
    StreamDecoder,
    UpstreamStreamError,
    check_supported,
    unsupported,
    upstream_request,
)

from gateway.engine.tools import ToolCallParser
from gateway.errors import InvalidRequest

NONE: frozenset[str] = frozenset()


def chat(**kwargs: object) -> GenerationRequest:
    return GenerationRequest(
        id="r", model="teacher", messages=[ChatMessage(role="user", content="Hi")], **kwargs
    )


def test_chat_request_carries_openai_fields_and_asks_for_a_stream_with_usage():
    request = chat(
        sampling=SamplingParams(
            temperature=0.0,
            top_p=0.5,
            presence_penalty=0.25,
            frequency_penalty=-0.5,
            seed=7,
            logit_bias={42: -100.0},
        ),
        stop=["\n\n"],
        max_tokens=12,
        logprobs=True,
        top_logprobs=3,
    )
    path, body = upstream_request(request, "gpt-4o-mini", NONE)
    assert path == "/chat/completions"
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.0,
        "top_p": 0.5,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "seed": 7,
        "logit_bias": {"42": -100.0},
        "stop": ["\n\n"],
        "max_tokens": 12,
        "logprobs": True,
        "top_logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, body = upstream_request(request, "o3-mini", NONE, max_tokens_field="max_completion_tokens")
    assert body["max_completion_tokens"] == 12 and "max_tokens" not in body


def test_defaults_are_not_sent():
    _, body = upstream_request(chat(), "m", NONE)
    assert set(body) == {"model", "messages", "stream", "stream_options"}


def test_history_with_tool_calls_and_tools_keep_openai_shapes():
    request = GenerationRequest(
        id="r",
        model="t",
        messages=[
            ChatMessage(role="user", content="Weather?", name="ann"),
            ChatMessage(
                role="assistant",
                tool_calls=[ToolCall(id="call_1", name="weather", arguments='{"city":"Oslo"}')],
            ),
            ChatMessage(role="tool", content="-3 C", tool_call_id="call_1"),
        ],
        tools=[ToolDefinition(name="weather", description="Now", parameters={"type": "object"})],
    )
    _, body = upstream_request(request, "m", NONE)
    assert body["messages"] == [
        {"role": "user", "content": "Weather?", "name": "ann"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": "-3 C", "tool_call_id": "call_1"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}, "description": "Now"},
        }
    ]


def test_text_prompt_goes_to_completions_and_byte_ids_read_back_as_text():
    path, body = upstream_request(
        GenerationRequest(id="r", model="t", prompt="Once upon", max_tokens=5, top_logprobs=2),
        "m",
        NONE,
    )
    assert path == "/completions"
    assert body["prompt"] == "Once upon" and body["max_tokens"] == 5 and body["logprobs"] == 2
    ids = list("Él a dit".encode())
    _, body = upstream_request(GenerationRequest(id="r", model="t", prompt=ids), "m", NONE)
    assert body["prompt"] == "Él a dit"


def test_token_ids_that_are_not_bytes_are_refused():
    with pytest.raises(InvalidRequest, match="text prompts") as caught:
        upstream_request(GenerationRequest(id="r", model="t", prompt=[15496, 11]), "m", NONE)
    assert caught.value.param == "prompt"


def test_fields_openai_lacks_are_refused_naming_each():
    request = chat(
        sampling=SamplingParams(top_k=40, min_p=0.05, mirostat=2, dry_multiplier=0.8),
        ignore_eos=True,
    )
    assert unsupported(request, NONE) == [
        "top_k",
        "min_p",
        "ignore_eos",
        "dry_multiplier",
        "mirostat",
    ]
    with pytest.raises(InvalidRequest) as caught:
        check_supported(request, NONE, "teacher")
    message = caught.value.message
    for name in ("`top_k`", "`min_p`", "`ignore_eos`", "`dry_multiplier`", "`mirostat`"):
        assert name in message
    assert caught.value.param == "top_k" and "drop_unsupported" in message


def test_extra_params_forward_under_the_upstreams_names():
    request = chat(
        sampling=SamplingParams(top_k=40, min_p=0.05, repeat_penalty=1.1), ignore_eos=True
    )
    vllm = frozenset({"top_k", "min_p", "repetition_penalty", "ignore_eos"})
    assert unsupported(request, vllm) == []
    _, body = upstream_request(request, "m", vllm)
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (40, 0.05, 1.1)
    assert body["ignore_eos"] is True
    llamacpp = frozenset({"repeat_penalty"})
    assert unsupported(request, llamacpp) == ["top_k", "min_p", "ignore_eos"]
    _, body = upstream_request(request, "m", llamacpp)  # what drop_unsupported sends
    assert body["repeat_penalty"] == 1.1
    assert not {"top_k", "min_p", "ignore_eos", "repetition_penalty"} & set(body)


def test_settings_that_change_nothing_upstream_are_not_refused():
    """Kobold and llama.cpp always send a sampler order and penalty windows; with their
    samplers off these change nothing, so they are neither refused nor sent."""
    request = chat(
        sampling=SamplingParams(
            order=["top_k", "top_p", "temperature"],
            penalty_last_n=320,
            xtc_threshold=0.2,
            dry_penalty_last_n=320,
            repeat_penalty_slope=0.5,
        ),
        cache_prompt=False,
        adapters=[],
    )
    assert unsupported(request, NONE) == []
    assert unsupported(chat(adapters=[AdapterRef(name="a")], slot=1), NONE) == [
        "adapters",
        "slot",
    ]


def test_constraints():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    _, body = upstream_request(chat(constraint=JsonSchemaConstraint(schema=schema)), "m", NONE)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    _, body = upstream_request(chat(constraint=JsonSchemaConstraint()), "m", NONE)
    assert body["response_format"] == {"type": "json_object"}
    text = GenerationRequest(
        id="r", model="t", prompt="x", constraint=JsonSchemaConstraint(schema=schema)
    )
    assert unsupported(text, NONE) == ["response_format"]
    _, body = upstream_request(text, "m", frozenset({"response_format"}))
    assert body["response_format"]["type"] == "json_schema"
    grammar = chat(constraint=GrammarConstraint(grammar='root ::= "a"'))
    assert unsupported(grammar, NONE) == ["grammar"]
    _, body = upstream_request(grammar, "m", frozenset({"grammar"}))
    assert body["grammar"] == 'root ::= "a"' and "response_format" not in body


def chat_event(content: str | None = None, finish: str | None = None, **delta: object) -> dict:
    if content is not None:
        delta["content"] = content
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_decoder_turns_a_chat_stream_into_chunks_and_a_priced_final():
    decoder = StreamDecoder(stop=["END"])
    assert decoder.feed(chat_event("", role="assistant")) is None
    first = decoder.feed(chat_event("Hel"))
    second = decoder.feed(chat_event("lo"))
    assert first is not None and second is not None
    assert (first.text, second.text) == ("Hel", "lo")
    assert decoder.feed(chat_event(finish="stop")) is None
    assert decoder.finished
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    usage["prompt_tokens_details"] = {"cached_tokens": 200}  # type: ignore[assignment]
    assert decoder.feed({"choices": [], "usage": usage}) is None
    [final] = decoder.finish((0.15 / 1e6, 0.60 / 1e6))
    assert final.finish_reason == "stop" and final.stop_word is None
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (1000, 500)
    assert final.usage.cached_tokens == 200
    assert final.usage.cost == pytest.approx(1000 * 0.15e-6 + 500 * 0.60e-6)
    assert final.timings is not None and final.timings.predicted_n == 500


def test_decoder_finish_reasons_and_stop_words():
    decoder = StreamDecoder(stop=["END"])
    decoder.feed({"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
    [final] = decoder.finish(None)
    assert final.finish_reason == "length" and final.usage is not None
    assert final.usage.cost is None  # no price: no cost
    vllm = StreamDecoder(stop=["END"])
    vllm.feed(
        {"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": "END"}]}
    )
    assert vllm.finish(None)[0].stop_word == "END"
    eos = StreamDecoder(stop=["END"])
    eos.feed({"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": 2}]})
    assert eos.finish(None)[0].stop_word is None
    limited = StreamDecoder()
    limited.feed(chat_event("a", finish="stop"))
    assert limited.finish(None, reason="length")[0].finish_reason == "length"


def test_decoder_writes_streamed_tool_calls_as_blocks_the_tool_parser_reads():
    decoder = StreamDecoder()
    decoder.feed(chat_event("Let me check. "))
    pieces = ['{"city": ', '"Oslo"}']
    decoder.feed(
        chat_event(
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": pieces[0]},
                }
            ]
        )
    )
    decoder.feed(chat_event(tool_calls=[{"index": 0, "function": {"arguments": pieces[1]}}]))
    decoder.feed(chat_event(finish="tool_calls"))
    calls, final = decoder.finish(None)
    assert final.finish_reason == "stop"
    parser = ToolCallParser([ToolDefinition(name="weather")])
    found = [*parser.feed(calls.text), *parser.finish()]
    [call] = [p for p in found if isinstance(p, ToolCall)]
    assert call.name == "weather" and json.loads(call.arguments) == {"city": "Oslo"}


def test_decoder_logprobs():
    decoder = StreamDecoder()
    chunk = decoder.feed(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": {
                        "content": [
                            {
                                "token": "Hi",
                                "logprob": -0.1,
                                "bytes": [72, 105],
                                "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": None}],
                            }
                        ]
                    },
                }
            ]
        }
    )
    assert chunk is not None
    [lp] = chunk.logprobs
    assert (lp.token, lp.logprob, lp.bytes, lp.token_id) == ("Hi", -0.1, [72, 105], -1)
    assert [t.token for t in lp.top] == ["Hi"]
    text = StreamDecoder().feed(
        {
            "choices": [
                {
                    "index": 0,
                    "text": " a",
                    "logprobs": {
                        "tokens": [" a"],
                        "token_logprobs": [-0.5],
                        "top_logprobs": [{" a": -0.5, " b": -1.5}],
                    },
                }
            ]
        }
    )
    assert text is not None
    [lp] = text.logprobs
    assert lp.logprob == -0.5 and {t.token: t.logprob for t in lp.top} == {" a": -0.5, " b": -1.5}


def test_decoder_reads_a_whole_response_and_refuses_error_events():
    decoder = StreamDecoder()
    chunk = decoder.feed(
        {
            "choices": [
                {"index": 0, "message": {"content": "All at once"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3},
        }
    )
    assert chunk is not None and chunk.text == "All at once" and decoder.finished
    with pytest.raises(UpstreamStreamError, match="overloaded"):
        StreamDecoder().feed({"error": {"message": "overloaded"}})


def test_sse_parser_splits_events_across_reads():
    parser = SseParser()
    assert parser.feed(b'data: {"a"') == []
    assert parser.feed(b": 1}\r\n\r\n: a comment\n\nevent: x\ndata: one\ndata: two\n") == [
        b'{"a": 1}'
    ]
    assert parser.feed(b"\ndata:[DONE]") == [b"one\ntwo"]
    assert parser.close() == [b"[DONE]"]
    assert parser.close() == []


def test_prices_longest_prefix_overrides_and_unknown_models():
    table = PriceTable({"gpt-4o-mini": Price(input=1.0, output=2.0)})
    assert table.lookup("openai", "gpt-4o-mini-2024-07-18") == Price(input=1.0, output=2.0)
    assert table.lookup("openai", "gpt-4o-2024-08-06") == Price(input=2.5, output=10.0)
    assert table.lookup("local", "smollm2") is None
    assert table.cost("local", "smollm2", 10, 10) is None
    assert table.cost("openai", "gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(2.0)
    qualified = PriceTable({"azure/gpt-4o": Price(input=5.0, output=15.0)})
    assert qualified.per_token("azure", "gpt-4o") == (5e-6, 15e-6)
    assert qualified.per_token("openai", "gpt-4o") == (2.5e-6, 10e-6)
