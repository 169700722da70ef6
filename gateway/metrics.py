"""Prometheus metrics of one gateway, in a registry of its own (no process globals)."""

from __future__ import annotations

from gateway_schemas.canonical import Usage
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

ANONYMOUS = "anonymous"
"""The tenant label of generations made without an API key."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests served, by route family and status",
            ["family", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "HTTP request latency (to the end of the response), by route family and status",
            ["family", "status"],
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

    def observe_request(self, family: str, status: int, seconds: float) -> None:
        self.requests.labels(family, str(status)).inc()
        self.latency.labels(family, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
