"""What a generation costs: a price table (USD per 1M tokens) applied to an upstream's usage.

A model id is looked up as `provider/model`, then as the bare `model`; each by exact match,
else by the longest key it starts with (`gpt-4o-mini-2024-07-18` costs what `gpt-4o-mini`
costs, not `gpt-4o`). A model the table does not know has no cost (None), as a local model.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway_teacher.settings import Price

DEFAULT_PRICES: dict[str, Price] = {
    name: Price(input=price[0], output=price[1])
    for name, price in {
        # OpenAI
        "gpt-4o": (2.50, 10.00),
        "gpt-4o-mini": (0.15, 0.60),
        "gpt-4.1": (2.00, 8.00),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1-nano": (0.10, 0.40),
        "gpt-4-turbo": (10.00, 30.00),
        "gpt-3.5-turbo": (0.50, 1.50),
        "o1": (15.00, 60.00),
        "o1-mini": (1.10, 4.40),
        "o3": (2.00, 8.00),
        "o3-mini": (1.10, 4.40),
        "o4-mini": (1.10, 4.40),
        # Anthropic (through an OpenAI-compatible endpoint)
        "claude-3-5-haiku": (0.80, 4.00),
        "claude-3-5-sonnet": (3.00, 15.00),
        "claude-3-7-sonnet": (3.00, 15.00),
        "claude-sonnet-4": (3.00, 15.00),
        "claude-opus-4": (15.00, 75.00),
        # Google, DeepSeek
        "gemini-2.0-flash": (0.10, 0.40),
        "gemini-2.5-flash": (0.30, 2.50),
        "gemini-2.5-pro": (1.25, 10.00),
        "deepseek-chat": (0.27, 1.10),
        "deepseek-reasoner": (0.55, 2.19),
    }.items()
}
"""List prices of well-known models (2025); `[teacher.prices]` overrides and extends them."""

PER_MILLION = 1_000_000


class PriceTable:
    """Prices by model id: the built-in table with the configured entries over it."""

    def __init__(self, configured: Mapping[str, Price] | None = None):
        self._prices = {**DEFAULT_PRICES, **(configured or {})}

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of `model` at `provider`, or None when the table does not know it."""
        for name in (f"{provider}/{model}", model):
            if name in self._prices:
                return self._prices[name]
            prefixes = [key for key in self._prices if name.startswith(key)]
            if prefixes:
                return self._prices[max(prefixes, key=len)]
        return None

    def per_token(self, provider: str, model: str) -> tuple[float, float] | None:
        """US dollars per prompt token and per completion token, or None."""
        price = self.lookup(provider, model)
        if price is None:
            return None
        return price.input / PER_MILLION, price.output / PER_MILLION

    def cost(
        self, provider: str, model: str, prompt_tokens: int, completion_tokens: int
    ) -> float | None:
        """US dollars of one generation, or None for a model without a price."""
        price = self.lookup(provider, model)
        if price is None:
            return None
        return (prompt_tokens * price.input + completion_tokens * price.output) / PER_MILLION
