"""OpenTelemetry spans, collected with the SDK's in-memory exporter (no OTLP): the tree of
a chat request (request, generate, queue, prefill, decode) continuing a client's trace,
the attributes, a refused request's span, a job's spans and phases, and no spans when
tracing is off; then the OTLP exporter, configured as an operator would, posting to a
collector. The teacher's propagation upstream: backends/teacher/tests/test_teacher_tracing.py."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from litestar.testing import TestClient
from live import http_server
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.jobs.store import Job, JobState
from gateway.plugins import make_plugin_manager
from gateway.settings import ApiKey, Settings, TracingSettings
from gateway.tracing import Tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
KEY = "inference-key-12345"


@pytest.fixture
def traced(tmp_path) -> Iterator[tuple[TestClient, InMemorySpanExporter, Gateway]]:
    settings = Settings(
        models=[ModelSpec(name="echo", backend="echo", options={"delay": 0.005})],
        data_dir=str(tmp_path),
        api_keys=[ApiKey(key=KEY)],
    )
    gateway = Gateway(settings, make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""}))
    exporter = InMemorySpanExporter()
    gateway.tracing = Tracing.with_exporter(exporter)
    with TestClient(create_app(gateway=gateway)) as client:
        yield client, exporter, gateway


def test_a_chat_request_is_a_span_tree_under_the_clients_trace(traced) -> None:
    client, exporter, _ = traced
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "abcdef"}]},
        headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01", "X-Api-Key": KEY},
    )
    assert reply.status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/chat/completions", "generate", "queue", "prefill", "decode"}
    request, generate = spans["POST /v1/chat/completions"], spans["generate"]
    assert {f"{span.context.trace_id:032x}" for span in spans.values()} == {TRACE}
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN
    assert generate.parent.span_id == request.context.span_id
    for phase in ("queue", "prefill", "decode"):
        assert spans[phase].parent.span_id == generate.context.span_id
    queue, prefill, decode = spans["queue"], spans["prefill"], spans["decode"]
    assert generate.start_time == queue.start_time <= queue.end_time == prefill.start_time
    assert prefill.end_time == decode.start_time <= decode.end_time == generate.end_time
    assert request.start_time <= generate.start_time and generate.end_time <= request.end_time
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["gateway.family"] == "openai"
    assert generate.attributes["gen_ai.request.model"] == "echo"
    assert generate.attributes["gen_ai.usage.output_tokens"] == 6
    assert generate.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert decode.attributes["gen_ai.usage.output_tokens"] == 6


def test_a_refused_request_has_its_status(traced) -> None:
    client, exporter, _ = traced
    reply = client.post("/v1/chat/completions", json={"messages": []})
    assert reply.status_code == 401
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 401
    assert span.parent is None and span.status.status_code is not StatusCode.ERROR


def test_an_ended_job_has_queued_and_running_spans(traced) -> None:
    _, exporter, gateway = traced
    now = time.time()
    job = Job(
        id="job-1",
        kind="sft",
        model="echo",
        state=JobState.COMPLETED,
        output_name="x",
        config={},
        created_at=now - 3,
        started_at=now - 2,
        finished_at=now,
    )
    gateway.tracing.job(job)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"job sft", "queued", "running"}
    root = spans["job sft"]
    assert root.parent is None and root.attributes["gateway.job.state"] == "completed"
    assert spans["queued"].end_time == spans["running"].start_time
    assert (spans["running"].end_time - spans["queued"].start_time) / 1e9 == pytest.approx(3)


def test_a_jobs_phases_are_spans_under_running(traced) -> None:
    _, exporter, gateway = traced
    now = time.time()
    phases = ["initializing", "teacher_generation", "training"]
    job = Job(
        id="job-2",
        kind="distillation",
        model="echo",
        state=JobState.FAILED,
        output_name="x",
        config={},
        created_at=now - 10,
        started_at=now - 9,
        finished_at=now,
        info={"phases": [{"name": n, "started_at": now - 9 + 3 * i} for i, n in enumerate(phases)]},
    )
    gateway.tracing.job(job)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    running = spans["running"]
    steps = [spans[f"phase {name}"] for name in phases]
    assert all(span.parent.span_id == running.context.span_id for span in steps)
    assert steps[0].start_time == running.start_time and steps[-1].end_time == running.end_time
    for before, after in itertools.pairwise(steps):
        assert before.end_time == after.start_time
    assert [round((s.end_time - s.start_time) / 1e9) for s in steps] == [3, 3, 3]


def test_tracing_off_makes_no_spans(tmp_path) -> None:
    settings = Settings(models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path))
    gateway = Gateway(settings, make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""}))
    assert gateway.tracing.tracer is None and gateway.tracing.provider is None


def test_the_otlp_exporter_sends_the_spans_to_a_collector(tmp_path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Collector) as url:
        settings = Settings(
            models=[ModelSpec(name="echo", backend="echo")],
            data_dir=str(tmp_path),
            tracing=TracingSettings(exporter="otlp", otlp_endpoint=f"{url}/v1/traces"),
        )
        gateway = Gateway(settings, make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""}))
        with TestClient(create_app(gateway=gateway)) as client:
            reply = client.post(
                "/v1/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "otlp"}]},
                headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"},
            )
            assert reply.status_code == 200
        # the server's shutdown flushed the batch
    assert received and {(path, kind) for path, kind, _ in received} == {
        ("/v1/traces", "application/x-protobuf")
    }
    names: set[str] = set()
    for _, _, body in received:
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert service["service.name"] == "gateway"
            for scope in resource.scope_spans:
                for span in scope.spans:
                    assert span.trace_id.hex() == TRACE
                    names.add(span.name)
    assert {"POST /v1/chat/completions", "generate", "queue", "prefill", "decode"} <= names
