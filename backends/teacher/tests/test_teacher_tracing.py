"""A client's W3C `traceparent` reaches the teacher's upstream: with tracing off the
client's own span is passed on; with tracing on, the gateway's span under it."""

from __future__ import annotations

from pathlib import Path

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from teacher_helpers import serve, teacher_settings, upstream

from gateway.engine import ModelSpec

TEACHER = ModelSpec(name="teacher", backend="teacher", source="up/m-1")
TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def ask(url: str) -> None:
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "teacher", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def test_the_clients_trace_goes_upstream_with_tracing_off(tmp_path: Path) -> None:
    with upstream() as up:
        settings = teacher_settings(tmp_path, {"up": {"base_url": up.url}}, [TEACHER])
        with serve(settings) as url:
            ask(url)
        assert up.headers[-1]["traceparent"] == f"00-{TRACE}-{CLIENT_SPAN}-01"


def test_with_tracing_on_the_upstream_is_a_child_of_the_gateways_span(tmp_path: Path) -> None:
    with upstream() as up:
        settings = teacher_settings(tmp_path, {"up": {"base_url": up.url}}, [TEACHER])
        exporter = InMemorySpanExporter()
        with serve(settings, exporter=exporter) as url:
            ask(url)
        version, trace_id, parent, flags = up.headers[-1]["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE, "01")
        spans = {span.name: span for span in exporter.get_finished_spans()}
        request = spans["POST /v1/chat/completions"]
        assert request.parent is not None and f"{request.parent.span_id:016x}" == CLIENT_SPAN
        assert parent == f"{request.context.span_id:016x}"  # the upstream's parent
