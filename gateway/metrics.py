"""Prometheus metrics of one gateway, in a registry of its own (no process globals).

Request and token counters are counted as requests end. The engines' figures are read when
`/metrics` is scraped (`EngineCollector`), under llama-server's own names
(`llamacpp:prompt_tokens_total`, ...; its README's table) with a `model` label, plus the
gateway's KV-cache and slot gauges."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway_schemas.canonical import Usage
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.engine.stats import EngineStats

if TYPE_CHECKING:
    from gateway.engine.models import ModelHandle

ANONYMOUS = "anonymous"
"""The tenant label of generations made without an API key."""


class Metrics:
    def __init__(self, engines: Callable[[], Mapping[str, EngineStats]] | None = None) -> None:
        """`engines`: each loaded model's engine figures, asked at every scrape."""
        self.registry = CollectorRegistry(auto_describe=True)
        if engines is not None:
            self.registry.register(EngineCollector(engines))
        self.snapshot = Snapshot()
        """Set by the `/metrics` handler before each scrape (`Gateway.metrics_snapshot`)."""
        self.registry.register(SnapshotCollector(lambda: self.snapshot))
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests served, by route family, route (`METHOD /path`) and status",
            ["family", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "HTTP request latency (to the end of the response), by route family, route and status",
            ["family", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.generated_tokens = Counter(
            "gateway_generated_tokens",
            "Tokens generated, by model",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens",
            "Prompt tokens read, by model",
            ["model"],
            registry=self.registry,
        )

        self.tokens = Counter(
            "gateway_tokens",
            "Tokens read (kind=prompt) and generated (kind=completion), by model and tenant "
            "(the API key's name)",
            ["model", "tenant", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "gateway_cost_usd",
            "What generations cost in US dollars (priced models: the teacher proxy), by model "
            "and tenant",
            ["model", "tenant"],
            registry=self.registry,
        )

        self.time_to_first_token = Histogram(
            "gateway_time_to_first_token_seconds",
            "Seconds from a generation's start (queue wait and prefill included) to its "
            "first token, by model",
            ["model"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.inter_token = Histogram(
            "gateway_inter_token_seconds",
            "Seconds between a generation's successive tokens, by model",
            ["model"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2),
        )
        self.model_events = Counter(
            "gateway_model_events",
            "Model manager events, by model: load, unload (asked for or idle) and evict "
            "(to make room for another)",
            ["model", "event"],
            registry=self.registry,
        )

    def observe_tokens(
        self, model: str, tokens: int, since_start: float, gap: float | None
    ) -> None:
        """`tokens` more of a generation: counted, and timed (its first ones against the
        start, later ones against the previous chunk, shared among them)."""
        self.generated_tokens.labels(model).inc(tokens)
        if gap is None:
            self.time_to_first_token.labels(model).observe(since_start)
            return
        histogram = self.inter_token.labels(model)
        for _ in range(tokens):
            histogram.observe(gap / tokens)

    def observe_model(self, event: str, handle: ModelHandle) -> None:
        """A model manager event (`ModelManager.on_change`)."""
        self.model_events.labels(handle.name, event).inc()

    def observe_usage(self, model: str, tenant: str | None, usage: Usage, counted: int) -> None:
        """Count a finished generation's usage: prompt tokens, the generated tokens not yet
        counted from token ids (`counted` were; a proxy sends none), tokens and cost per
        tenant."""
        self.prompt_tokens.labels(model).inc(usage.prompt_tokens)
        if usage.completion_tokens > counted:
            self.generated_tokens.labels(model).inc(usage.completion_tokens - counted)
        who = tenant or ANONYMOUS
        self.tokens.labels(model, who, "prompt").inc(usage.prompt_tokens)
        self.tokens.labels(model, who, "completion").inc(usage.completion_tokens)
        if usage.cost is not None:
            self.cost.labels(model, who).inc(usage.cost)

    def observe_request(self, family: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(family, route, str(status)).inc()
        self.latency.labels(family, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


Figure = Callable[[EngineStats], float]
Table = tuple[tuple[str, str, Figure], ...]


def _rate(amount: float, over: float) -> float:
    return amount / over if over else 0.0


COUNTERS: Table = (
    ("llamacpp:prompt_tokens", "Number of prompt tokens processed.", lambda s: s.prompt_tokens),
    ("llamacpp:prompt_seconds", "Prompt process time in seconds.", lambda s: s.prompt_seconds),
    (
        "llamacpp:tokens_predicted",
        "Number of generation tokens processed.",
        lambda s: s.predicted_tokens,
    ),
    (
        "llamacpp:tokens_predicted_seconds",
        "Predict process time in seconds.",
        lambda s: s.predicted_seconds,
    ),
    ("llamacpp:n_decode", "Total number of batched forward passes.", lambda s: s.decode_calls),
)
"""Counters (exposed with `_total`), llama-server's names and help texts."""
GAUGES: Table = (
    (
        "llamacpp:prompt_tokens_seconds",
        "Average prompt throughput in tokens/s.",
        lambda s: _rate(s.prompt_tokens, s.prompt_seconds),
    ),
    (
        "llamacpp:predicted_tokens_seconds",
        "Average generation throughput in tokens/s.",
        lambda s: _rate(s.predicted_tokens, s.predicted_seconds),
    ),
    ("llamacpp:requests_processing", "Number of requests processing.", lambda s: s.processing),
    ("llamacpp:requests_deferred", "Number of requests deferred.", lambda s: s.deferred),
    (
        "llamacpp:n_tokens_max",
        "High watermark of the context size observed.",
        lambda s: s.tokens_max,
    ),
    (
        "llamacpp:n_busy_slots_per_decode",
        "Average number of busy slots per forward pass.",
        lambda s: _rate(s.busy_slots, s.decode_calls),
    ),
    ("gateway_slots", "Slots (sequences one forward pass can batch).", lambda s: s.slots),
    (
        "gateway_kv_cache_tokens",
        "Tokens the KV cache holds, over every slot.",
        lambda s: s.cached_tokens,
    ),
    (
        "gateway_kv_cache_usage_ratio",
        "KV cache use: tokens held over tokens it can hold.",
        lambda s: _rate(s.cached_tokens, s.cache_capacity),
    ),
    (
        "gateway_adapters_resident",
        "LoRA adapters held in the engine's memory.",
        lambda s: s.adapters_resident,
    ),
)
"""Gauges. llama-server types `n_tokens_max` a counter although a high watermark is a
gauge; a counter named without `_total` is not one prometheus-client writes."""


class EngineCollector(Collector):
    """The engines' figures at scrape time (`COUNTERS`, `GAUGES`), one series per model."""

    def __init__(self, engines: Callable[[], Mapping[str, EngineStats]]):
        self._engines = engines

    def describe(self) -> list[Metric]:
        return []  # collected at each scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        engines = self._engines()
        kinds: list[tuple[type[CounterMetricFamily | GaugeMetricFamily], Table]] = [
            (CounterMetricFamily, COUNTERS),
            (GaugeMetricFamily, GAUGES),
        ]
        for kind, table in kinds:
            for name, help, figure in table:
                metric = kind(name, help, labels=["model"])
                for model, stats in engines.items():
                    metric.add_metric([model], figure(stats))
                yield metric


@dataclass
class Snapshot:
    """What the scrape reads besides the engines, gathered just before it (`/metrics`
    handler): each model's manager state, and the job store's counts and progress."""

    models: dict[str, str] = field(default_factory=dict)
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    """(kind, state) -> jobs."""
    progress: list[tuple[str, str, str, float]] = field(default_factory=list)
    """(job id, kind, model, progress 0..1) of each running job."""


class SnapshotCollector(Collector):
    """`gateway_model_state`, `gateway_jobs` and `gateway_job_progress` from the latest
    `Snapshot`."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        states = GaugeMetricFamily(
            "gateway_model_state",
            "1 for each model's current state in the model manager (loaded, unloaded, ...)",
            labels=["model", "state"],
        )
        for model, state in snapshot.models.items():
            states.add_metric([model, state], 1.0)
        yield states
        jobs = GaugeMetricFamily(
            "gateway_jobs",
            "Training and distillation jobs by kind and state",
            labels=["kind", "state"],
        )
        for (kind, state), count in sorted(snapshot.jobs.items()):
            jobs.add_metric([kind, state], count)
        yield jobs
        progress = GaugeMetricFamily(
            "gateway_job_progress",
            "Progress (0 to 1) of each running job",
            labels=["job_id", "kind", "model"],
        )
        for job_id, kind, model, done in snapshot.progress:
            progress.add_metric([job_id, kind, model], done)
        yield progress
