"""Prometheus metrics of one gateway, in a registry of its own (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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

    def observe_request(self, family: str, status: int, seconds: float) -> None:
        self.requests.labels(family, str(status)).inc()
        self.latency.labels(family, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
