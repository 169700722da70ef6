"""OpenTelemetry traces, when `[tracing] exporter` asks for them (`none` by default).

A span per HTTP request (`GET /v1/models`, ...: method, route, family, status), continuing
the trace of a W3C `traceparent` header the client sent. Under it, a `generate` span per
generation (model, adapters, token counts, finish reason) with three children laid out
from the engine's timings: `queue` (waiting for a slot), `prefill` (the prompt, to the
first token) and `decode` (the rest). A training or distillation job gets a `job` span
with `queued` and `running` children when it ends. Calls to a teacher's upstream carry
the current `traceparent` (`inject`), so the upstream's spans join the client's trace;
a client's `traceparent` is passed on even when tracing is off.

Off, nothing is created: the request path only checks `tracer is None` (see
`benchmarks/bench_tracing.py`). The provider is this gateway's own, never the process's
global one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway_schemas.canonical import GenerationChunk, GenerationRequest
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.util.types import AttributeValue

    from gateway.jobs.store import Job
    from gateway.settings import TracingSettings

PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace's `traceparent` (and `tracestate`) to outgoing `headers`."""
    PROPAGATOR.inject(headers)


class Tracing:
    """This gateway's tracer (None when tracing is off) and the spans it makes."""

    def __init__(self, provider: TracerProvider | None = None):
        self.provider = provider
        self.tracer = provider.get_tracer("gateway") if provider is not None else None

    @classmethod
    def from_settings(cls, settings: TracingSettings) -> Tracing:
        if settings.exporter == "none":
            return cls()
        return cls.with_exporter(_exporter(settings), service=settings.service_name, batch=True)

    @classmethod
    def with_exporter(
        cls, exporter: SpanExporter, *, service: str = "gateway", batch: bool = False
    ) -> Tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    @contextlib.contextmanager
    def request(
        self, method: str, route: str, family: str, headers: Mapping[str, str]
    ) -> Iterator[Any]:
        """The span of one HTTP request (None when off), current for its duration; a
        client's `traceparent` is the parent (and is current even when off)."""
        parent = PROPAGATOR.extract(headers) if TRACEPARENT in headers else None
        token = otel_context.attach(parent) if parent is not None else None
        try:
            if self.tracer is None:
                yield None
                return
            attributes = {
                "http.request.method": method,
                "http.route": route,
                "gateway.family": family,
            }
            with self.tracer.start_as_current_span(
                f"{method} {route}",
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,  # a 4xx is an answer: the caller sets the status
                set_status_on_exception=False,
            ) as span:
                yield span
        finally:
            if token is not None:
                otel_context.detach(token)

    def generation(
        self,
        request: GenerationRequest,
        final: GenerationChunk,
        started_ns: int,
        first_token_ns: int | None,
        ended_ns: int,
    ) -> None:
        """The spans of a finished generation under the current span, laid out from its
        start, first token and end and the engine's prompt time (queue = time to first
        token less the engine's prompt time)."""
        if self.tracer is None:
            return
        usage = final.usage
        attributes: dict[str, AttributeValue] = {
            "gen_ai.request.model": request.model,
            "gen_ai.response.finish_reasons": [final.finish_reason or "abort"],
            "gateway.adapters": [ref.name for ref in request.adapters or []],
        }
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if request.tenant:
            attributes["gateway.tenant"] = request.tenant
        parent = self.tracer.start_span("generate", start_time=started_ns, attributes=attributes)
        inside = trace.set_span_in_context(parent)
        first = first_token_ns if first_token_ns is not None else ended_ns
        prompt_ns = int(final.timings.prompt_ms * 1e6) if final.timings is not None else 0
        admitted = max(started_ns, first - prompt_ns)
        phases = [("queue", started_ns, admitted), ("prefill", admitted, first)]
        if first_token_ns is not None:
            phases.append(("decode", first, ended_ns))
        for name, start, end in phases:
            span = self.tracer.start_span(name, context=inside, start_time=start)
            if name == "prefill" and usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            if name == "decode" and usage is not None:
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            span.end(end_time=end)
        parent.end(end_time=ended_ns)

    def job(self, job: Job) -> None:
        """The spans of an ended job: `job` with `queued` and `running` children, and
        under `running` one span per phase the job entered (`Job.info["phases"]`, which
        `TrainingContext.phase` records: a distillation job's `data_generation`, ...)."""
        if self.tracer is None:
            return
        created = _ns(job.created_at)
        finished = _ns(job.finished_at) if job.finished_at else time.time_ns()
        started = _ns(job.started_at) if job.started_at else finished
        attributes: dict[str, AttributeValue] = {
            "gateway.job.id": job.id,
            "gateway.job.kind": job.kind,
            "gateway.job.state": str(job.state.value),
            "gen_ai.request.model": job.model,
            "gateway.job.progress": float(job.progress),
        }
        parent = self.tracer.start_span(
            f"job {job.kind}",
            context=otel_context.Context(),
            start_time=created,
            attributes=attributes,
        )
        inside = trace.set_span_in_context(parent)
        self.tracer.start_span("queued", context=inside, start_time=created).end(end_time=started)
        if job.started_at:
            running = self.tracer.start_span("running", context=inside, start_time=started)
            phases = [p for p in job.info.get("phases") or [] if p.get("started_at")]
            ends = [*(_ns(p["started_at"]) for p in phases[1:]), finished][: len(phases)]
            for phase, end in zip(phases, ends, strict=True):
                begin = max(_ns(phase["started_at"]), started)
                self.tracer.start_span(
                    f"phase {phase['name']}",
                    context=trace.set_span_in_context(running),
                    start_time=begin,
                ).end(end_time=max(end, begin))
            running.end(end_time=finished)
        parent.end(end_time=finished)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            '[tracing] exporter = "otlp" needs the OTLP exporter: '
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from None
    return (
        OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        if settings.otlp_endpoint
        else OTLPSpanExporter()
    )
