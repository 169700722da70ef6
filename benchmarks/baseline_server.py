"""Baseline for the serving benchmark: plain transformers `generate` behind a tiny HTTP server.

It is what one writes in an afternoon without a serving engine: the standard library's
`ThreadingHTTPServer`, `model.generate` with a `TextIteratorStreamer` on a worker thread,
and ONE generation at a time (a lock; other requests wait their turn). It speaks just
enough of the OpenAI chat API for `bench_serving.py`:

- `POST /v1/chat/completions`: `messages`, `max_tokens`/`max_completion_tokens`,
  `temperature`, `top_p`, `seed`, `stream`, `stream_options.include_usage`, and the
  local-server extra `ignore_eos` (every request then generates exactly `max_tokens`);
- `GET /health` (200 once the model is loaded: the port opens only then), `GET /v1/models`.

The model is a Hugging Face folder (for instance the safetensors cache the gateway writes
under `data_dir/models/`) or a `.gguf` file. transformers ignores a GGUF's tokenizer
metadata (`tokenizer.ggml.add_bos_token`, the EOS id): for SmolLM2 it would prepend
`<|im_start|>` and stop on the wrong token; this server applies the metadata itself.

    python benchmarks/baseline_server.py --model path/to/model.gguf --port 8001
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

log = logging.getLogger("baseline")

DEFAULT_MAX_TOKENS = 256


# ---- requests -----------------------------------------------------------------------------


class BadRequest(ValueError):
    """A request this server refuses (answered with HTTP 400)."""


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a chat completion request this server honours."""

    messages: list[dict[str, str]]
    max_tokens: int
    ignore_eos: bool
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    include_usage: bool


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body into a ChatRequest (BadRequest when it is not one)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    messages = [_parse_message(m) for m in _require_list(body, "messages")]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer")
    options = body.get("stream_options") or {}
    return ChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        ignore_eos=bool(body.get("ignore_eos", False)),
        temperature=_number(body, "temperature", 1.0),
        top_p=_number(body, "top_p", 1.0),
        seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


def _number(body: dict[str, Any], key: str, default: float) -> float:
    """A numeric field (null or absent: `default`)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"`{key}` must be a number")
    return float(value)


def _require_list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list) or not value:
        raise BadRequest(f"`{key}` must be a non-empty list")
    return value


def _parse_message(message: Any) -> dict[str, str]:
    """A message as {"role", "content"} with text content (text parts are joined)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest("each message needs a `role`")
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    if not isinstance(content, str):
        raise BadRequest("message `content` must be text")
    return {"role": message["role"], "content": content}


# ---- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM, its tokenizer and the ids that end a generation."""

    model: Any
    tokenizer: Any
    eos_ids: list[int]
    device: torch.device


def load_model(path: Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a Hugging Face folder or a `.gguf` file (applying the GGUF's tokenizer metadata)."""
    is_gguf = path.is_file() and path.suffix.lower() == ".gguf"
    folder, extra = (path.parent, {"gguf_file": path.name}) if is_gguf else (path, {})
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **extra)
    model.to(torch_device)
    model.eval()
    if is_gguf:
        add_bos, eos_id = read_gguf_tokenizer_meta(path)
        eos_ids = _apply_gguf_meta(model, tokenizer, add_bos, eos_id)
    else:
        eos_ids = _eos_ids(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, eos_ids=eos_ids, device=torch_device)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The gateway's defaults: bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def read_gguf_tokenizer_meta(path: Path) -> tuple[bool | None, int | None]:
    """`tokenizer.ggml.add_bos_token` and `tokenizer.ggml.eos_token_id` of a GGUF file."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def scalar(key: str) -> Any:
        field = fields.get(key)
        if field is None or not field.data:
            return None
        return field.parts[field.data[0]][0].item()

    add_bos = scalar("tokenizer.ggml.add_bos_token")
    eos_id = scalar("tokenizer.ggml.eos_token_id")
    return (None if add_bos is None else bool(add_bos)), (None if eos_id is None else int(eos_id))


def _apply_gguf_meta(
    model: Any, tokenizer: Any, add_bos: bool | None, eos_id: int | None
) -> list[int]:
    """Make the tokenizer and the generation config agree with the GGUF; the EOS ids."""
    if add_bos is not None:
        # Prompts are encoded without special tokens anyway; this keeps other uses right.
        with contextlib.suppress(AttributeError):
            tokenizer.add_bos_token = add_bos
    if eos_id is None:
        return _eos_ids(model, tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    for config in (model.config, model.generation_config):
        config.eos_token_id = eos_id
        config.pad_token_id = eos_id
    return [eos_id]


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The generation config's EOS id(s), else the tokenizer's."""
    configured = model.generation_config.eos_token_id
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return []
    return list(configured) if isinstance(configured, list | tuple) else [int(configured)]


# ---- generation ---------------------------------------------------------------------------


class TokenStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that hands out text after every token.

    The stock streamer holds text back until a word is complete, which would make the
    baseline's chunks arrive a word (often two tokens) late. This one releases each
    token's text at once, holding back only incomplete UTF-8 sequences.
    """

    def put(self, value: torch.Tensor) -> None:
        """Receive the next token id(s); queue the new text."""
        if value.dim() > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        tokenizer: Any = self.tokenizer
        text = tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return
        printable = text[self.print_len :]
        if text.endswith("\n"):  # start afresh: keeps re-decoding short
            self.token_cache, self.print_len = [], 0
        else:
            self.print_len = len(text)
        self.on_finalized_text(printable)


class CancelOnEvent(StoppingCriteria):
    """Stops generation once `event` is set (the client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


@dataclass(frozen=True)
class Outcome:
    """Token counts and why a generation ended."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Generator:
    """Runs one `model.generate` at a time; other callers wait on the lock."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._lock = threading.Lock()

    def run(
        self, request: ChatRequest, on_text: Callable[[str], None], cancel: threading.Event
    ) -> Outcome:
        """Generate for `request`, calling `on_text` with each new piece of text."""
        with self._lock:
            input_ids = self._encode(request.messages)
            streamer = TokenStreamer(
                self.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True
            )
            kwargs = self._generate_kwargs(request, input_ids, streamer, cancel)
            box: dict[str, Any] = {}
            worker = threading.Thread(target=_generate_into, args=(self.loaded.model, kwargs, box))
            worker.start()
            for text in streamer:
                if text:
                    on_text(text)
            worker.join()
        if "error" in box:
            raise box["error"]
        prompt_tokens = int(input_ids.shape[1])
        completion = int(box["output"].shape[1]) - prompt_tokens
        finish = "length" if completion >= request.max_tokens else "stop"
        return Outcome(prompt_tokens, completion, finish)

    def _encode(self, messages: list[dict[str, str]]) -> torch.Tensor:
        """The chat template rendered and tokenized without extra special tokens."""
        tokenizer = self.loaded.tokenizer
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.loaded.device)

    def _generate_kwargs(
        self,
        request: ChatRequest,
        input_ids: torch.Tensor,
        streamer: TokenStreamer,
        cancel: threading.Event,
    ) -> dict[str, Any]:
        sample = request.temperature > 0
        if sample and request.seed is not None:
            torch.manual_seed(request.seed)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": request.max_tokens,
            "do_sample": sample,
            "eos_token_id": self.loaded.eos_ids or None,
            "pad_token_id": self.loaded.eos_ids[0] if self.loaded.eos_ids else None,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([CancelOnEvent(cancel)]),
        }
        if request.ignore_eos:
            kwargs["min_new_tokens"] = request.max_tokens
        if sample:
            kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def _generate_into(model: Any, kwargs: dict[str, Any], box: dict[str, Any]) -> None:
    """Thread target: `model.generate`, its output or error stored in `box`."""
    try:
        with torch.inference_mode():
            box["output"] = model.generate(**kwargs)
    except Exception as exc:  # reported to the request's handler
        box["error"] = exc
        kwargs["streamer"].end()  # unblock the reader


# ---- HTTP ---------------------------------------------------------------------------------


def chunk(completion_id: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    """One `chat.completion.chunk` SSE event."""
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return sse(payload)


def sse(payload: Any) -> bytes:
    """A server-sent event carrying `payload` as JSON (or `[DONE]`)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def usage_chunk(completion_id: str, model: str, outcome: Outcome) -> bytes:
    """The final chunk of `stream_options.include_usage`: no choices, the token counts."""
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(outcome),
    }
    return sse(payload)


def usage(outcome: Outcome) -> dict[str, int]:
    """The OpenAI `usage` object of a generation."""
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 handler: every response ends by closing the connection (no chunked coding)."""

    server: BaselineServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path in ("/health", "/v1/health"):
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif self.path == "/v1/models":
            model = {"id": self.server.model_name, "object": "model", "owned_by": "baseline"}
            self._json(HTTPStatus.OK, {"object": "list", "data": [model]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = parse_chat_request(json.loads(self.rfile.read(length) or b"null"))
        except (ValueError, TypeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        if request.stream:
            self._stream(request)
        else:
            self._complete(request)

    def _stream(self, request: ChatRequest) -> None:
        """Answer with SSE chunks: role, one per text piece, the finish, usage, [DONE]."""
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = self.server.model_name
        cancel = threading.Event()

        def write(data: bytes) -> None:
            if cancel.is_set():
                return
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:  # the client went away: stop generating
                cancel.set()

        def on_text(text: str) -> None:
            write(chunk(completion_id, model, {"content": text}, None))

        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        write(chunk(completion_id, model, {"role": "assistant", "content": ""}, None))
        try:
            outcome = self.server.generator.run(request, on_text, cancel)
        except Exception as exc:
            log.exception("generation failed")
            write(sse({"error": {"message": str(exc), "type": "server_error"}}))
            return
        write(chunk(completion_id, model, {}, outcome.finish_reason))
        if request.include_usage:
            write(usage_chunk(completion_id, model, outcome))
        write(sse("[DONE]"))

    def _complete(self, request: ChatRequest) -> None:
        """Answer with one `chat.completion` object."""
        pieces: list[str] = []
        try:
            outcome = self.server.generator.run(request, pieces.append, threading.Event())
        except Exception as exc:
            log.exception("generation failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
            return
        message = {"role": "assistant", "content": "".join(pieces)}
        choice = {"index": 0, "message": message, "finish_reason": outcome.finish_reason}
        self._json(
            HTTPStatus.OK,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.server.model_name,
                "choices": [choice],
                "usage": usage(outcome),
            },
        )

    def _json(self, status: HTTPStatus, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error"}})


class BaselineServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the generator and the served model's name."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], generator: Generator, model_name: str) -> None:
        super().__init__(address, Handler)
        self.generator = generator
        self.model_name = model_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="HF folder or .gguf file")
    parser.add_argument("--name", default="smollm2-135m-instruct", help="model id to report")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.model, args.device, args.dtype)
    log.info(
        "loaded %s in %.1fs on %s (eos ids %s, %d torch threads)",
        args.model,
        time.perf_counter() - started,
        loaded.device,
        loaded.eos_ids,
        torch.get_num_threads(),
    )
    server = BaselineServer((args.host, args.port), Generator(loaded), args.name)
    log.info("listening on http://%s:%d", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
