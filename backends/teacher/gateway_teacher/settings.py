"""The `[teacher]` settings section and the options of one `[[models]]` entry.

```toml
[teacher]
drop_unsupported = false     # true: drop sampling fields an upstream lacks instead of a 400
num_retries = 2              # retries within a model's group of deployments
cooldown_seconds = 5         # how long a failing deployment is skipped
max_fallbacks = 5            # fallback groups tried after the first one
backoff_seconds = 0.5        # first wait before retrying the same deployment (doubles)

[teacher.providers.local]
base_url = "http://127.0.0.1:8001/v1"
api_key_env = "LOCAL_GATEWAY_KEY"   # the NAME of an environment variable; "" for none
extra_params = ["top_k", "min_p", "repetition_penalty"]
timeout = 120

[teacher.prices]
"gpt-4o-mini" = { input = 0.15, output = 0.60 }   # USD per 1M tokens

[[models]]
name = "openai/gpt-4o-mini"
backend = "teacher"
options = { fallbacks = ["local/smollm2-135m-instruct"] }
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

NonNegative = Annotated[float, Meta(ge=0.0)]

EXTRA_PARAMS = frozenset(
    {
        "top_k",
        "min_p",
        "typical_p",
        "repetition_penalty",
        "repeat_penalty",
        "ignore_eos",
        "grammar",
        "response_format",
    }
)
"""The upstream fields beyond OpenAI's that a provider may declare in `extra_params`:
vLLM and the gateway take `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`; llama.cpp's
server takes `repeat_penalty` and `grammar`; `response_format` on a text completion."""


class ProviderSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[teacher.providers.NAME]`: one OpenAI-compatible API.

    `base_url` ends before `/chat/completions` (`https://api.openai.com/v1`); the key is
    read from the environment variable named by `api_key_env` when a model is built (an
    empty name sends no key); `extra_params` are the non-OpenAI sampling fields this
    upstream accepts (see `EXTRA_PARAMS`); `timeout` bounds connecting and every read,
    in seconds; `max_tokens_field` is the name a chat request's limit goes under
    (`max_completion_tokens` for OpenAI's reasoning models).
    """

    base_url: Annotated[str, Meta(min_length=1)]
    api_key_env: str = ""
    extra_params: list[str] = field(default_factory=list)
    timeout: Annotated[float, Meta(gt=0.0)] = 600.0
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class Price(Struct, kw_only=True, forbid_unknown_fields=True):
    """US dollars per million input (prompt) and output (completion) tokens."""

    input: NonNegative
    output: NonNegative


BUILTIN_PROVIDERS = {
    "openai": ProviderSettings(base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
}
"""Providers known without configuration; `[teacher.providers.openai]` replaces this one."""


class TeacherSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[teacher]`: providers, the retry policy and the price table of every teacher model."""

    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    drop_unsupported: bool = False
    num_retries: Annotated[int, Meta(ge=0, le=20)] = 2
    cooldown_seconds: NonNegative = 5.0
    max_fallbacks: Annotated[int, Meta(ge=0, le=20)] = 5
    backoff_seconds: NonNegative = 0.5
    max_connections: Annotated[int, Meta(ge=1)] = 256
    """Connections the backend's one HTTP client keeps to all upstreams together."""
    trust_env: bool = False
    """Reach upstreams through the proxies of `HTTPS_PROXY`/`HTTP_PROXY` (and `NO_PROXY`)."""
    prices: dict[str, Price] = field(default_factory=dict)
    """USD per 1M tokens by model id, over the built-in table (`gateway_teacher.prices`)."""

    def all_providers(self) -> dict[str, ProviderSettings]:
        return {**BUILTIN_PROVIDERS, **self.providers}


class DeploymentSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One upstream of a model: a provider and the model id that provider knows."""

    provider: Annotated[str, Meta(min_length=1)]
    model: Annotated[str, Meta(min_length=1)]


class TeacherOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[[models]] options` of a teacher model.

    `deployments`: the model's group of upstreams (default: the one that `source`, or the
    model's name, names as `provider/model`); `fallbacks`: further `provider/model` ids
    tried in order when the whole group fails; `system_prompt`: instructions the model
    gets before every chat (a system message put first, or joined to the first one):
    a persona or house rules for a teacher, which the student it teaches never sees.

    `routing`: how a generation picks among the deployments: `round_robin` (in turn), or
    `prefix_affinity` for replicas with a prompt cache: the deployment that the first
    `affinity_prefix` characters of the prompt prefer (rendezvous hashing), unless it
    already has more than `affinity_balance` times its share of the generations in flight
    (`gateway_teacher.affinity`).
    """

    deployments: list[DeploymentSpec] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    routing: Literal["round_robin", "prefix_affinity"] = "round_robin"
    affinity_prefix: Annotated[int, Meta(ge=1)] = 512
    affinity_balance: Annotated[float, Meta(ge=1.0)] = 1.25
