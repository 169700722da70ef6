"""Who may call each route: the one table of API-key scopes and browser origins.

Every route a family mounts has a row here, named `"METHOD /path"` as Litestar formats the
path (parameters without their types). A row's `Access` says which API-key scope the route
needs (none: public) and whether browsers on other origins may call it by default
(`private`: only the origins of `[cors] private_origins`, localhost by default; otherwise
those of `[cors] origins`, any by default). A route is private when it changes what the
server serves or reads data that is not the caller's alone: adapters, training,
distillation, Kobold's admin routes and shutdown, slots, `POST /props`, metrics.

The host refuses to start with a mounted route that has no row, or a row that names no
route, so a new route cannot fall back to a scope nobody chose. Third-party families give
their own rows in `RouteFamily.access`. `gateway routes` prints the table of a
configuration; `docs/access.md` is its print for the built-in families.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from litestar.routes import BaseRoute, HTTPRoute

from gateway.errors import ConfigError
from gateway.settings import Scope

if TYPE_CHECKING:
    from gateway.routes.family import RouteFamily


@dataclass(frozen=True)
class Access:
    """What a route asks of its callers: an API-key scope (None: no key), and whether
    only `[cors] private_origins` may call it from other origins' pages."""

    scope: Scope | None
    private: bool


PUBLIC = Access(None, private=False)
"""No key needed, any origin: health and discovery."""
SERVE = Access("inference", private=False)
"""Generation, tokenizing, listing models: what a chat page on any origin may call."""
READ = Access("inference", private=True)
"""Reads what another tenant's work left: adapters (their weights too), slots."""
ADAPTERS = Access("adapters", private=True)
TRAIN = Access("train", private=True)
ADMIN = Access("admin", private=True)
OPENAPI = SERVE
"""The OpenAPI document's routes (`/schema/*`), which Litestar mounts outside any family
(`AccessTable.cover`)."""


def rows(groups: Mapping[Access, Iterable[str]]) -> dict[str, Access]:
    """`{access: ["METHOD /path", ...]}` -> `{"METHOD /path": access}`."""
    return {route: access for access, routes in groups.items() for route in routes}


TABLE: dict[str, dict[str, Access]] = {
    "health": rows({PUBLIC: ["GET /health", "GET /v1/health"]}),
    "metrics": rows({ADMIN: ["GET /metrics"]}),
    "stats": rows(
        {
            SERVE: ["GET /v1/stats/decode"],
            ADMIN: ["GET /v1/config", "GET /v1/stats/recent-requests"],
        }
    ),
    "models": rows(
        {
            SERVE: ["GET /v1/models/status", "GET /models/sse"],
            ADMIN: [
                "POST /v1/models/load",
                "POST /v1/models/unload",
                "POST /models/load",
                "POST /models/unload",
            ],
        }
    ),
    "openai": rows(
        {
            SERVE: [
                "POST /v1/chat/completions",
                "POST /v1/completions",
                "POST /v1/embeddings",
                "GET /v1/models",
                "GET /v1/models/{model_id}",
                "POST /v1/audio/speech",
                "POST /v1/audio/transcriptions",
                "POST /v1/audio/translations",
            ],
            ADMIN: ["POST /v1/models"],
        }
    ),
    "llamacpp": rows(
        {
            SERVE: [
                "POST /completion",
                "POST /chat/completions",
                "POST /completions",
                "POST /embedding",
                "POST /embeddings",
                "POST /infill",
                "POST /tokenize",
                "POST /detokenize",
                "POST /apply-template",
                "POST /rerank",
                "POST /reranking",
                "POST /v1/rerank",
                "POST /v1/reranking",
                "POST /v1/chat/completions/input_tokens",
                "POST /v1/responses/input_tokens",
                "GET /models",
                "GET /models/{model_id}",
                "GET /props",
            ],
            READ: ["GET /slots", "GET /lora-adapters"],
            ADAPTERS: ["POST /lora-adapters"],
            ADMIN: ["POST /props", "POST /slots/{id_slot}", "POST /models"],
        }
    ),
    "kobold": rows(
        {
            PUBLIC: ["GET /.well-known/serviceinfo"],
            SERVE: [
                "POST /api/v1/generate",
                "POST /api/latest/generate",
                "POST /api/extra/generate/stream",
                "GET /api/extra/generate/check",
                "POST /api/extra/generate/check",
                "POST /api/extra/abort",
                "POST /api/extra/last_logprobs",
                "GET /api/v1/model",
                "GET /api/latest/model",
                "GET /api/v1/info/version",
                "GET /api/latest/info/version",
                "GET /api/v1/config/max_context_length",
                "GET /api/latest/config/max_context_length",
                "GET /api/v1/config/max_length",
                "GET /api/latest/config/max_length",
                "GET /api/extra/version",
                "GET /api/extra/perf",
                "GET /api/extra/true_max_context_length",
                "POST /api/extra/tokencount",
                "POST /api/extra/tokenize",
                "POST /api/extra/detokenize",
                "POST /api/extra/embeddings",
                "POST /api/extra/json_to_grammar",
                "GET /api/extra/preloadstory",
                "POST /api/extra/data/list",
                "POST /api/extra/data/load",
                "POST /api/extra/data/save",
                "POST /api/extra/multiplayer/status",
                "POST /api/extra/multiplayer/getstory",
                "POST /api/extra/multiplayer/setstory",
                "POST /api/extra/transcribe",
                "POST /api/extra/tts",
                "POST /api/extra/websearch",
                "GET /sdapi/v1/sd-models",
                "GET /sdapi/v1/options",
                "GET /sdapi/v1/samplers",
                "GET /sdapi/v1/upscalers",
                "GET /sdapi/v1/latent-upscale-modes",
                "POST /sdapi/v1/txt2img",
                "POST /sdapi/v1/img2img",
                "POST /sdapi/v1/interrogate",
                "GET /props",  # mounted only while the llama.cpp family (its /props) is off
            ],
            ADMIN: [
                "POST /api/extra/shutdown",
                "GET /api/admin/list_options",
                "POST /api/admin/reload_config",
                "POST /api/admin/check_state",
                "POST /api/admin/save_state",
                "POST /api/admin/load_state",
                "POST /api/admin/clear_state",
            ],
        }
    ),
    "adapters": rows(
        {
            SERVE: ["POST /v1/completions/batch"],
            READ: ["GET /v1/adapters", "GET /v1/adapters/{name}/download"],
            ADAPTERS: [
                "POST /v1/adapters/load",
                "POST /v1/adapters/unload",
                "POST /v1/adapters/upload",
                "POST /v1/adapters/merge",
                "DELETE /v1/adapters/{name}",
            ],
        }
    ),
    "training": rows(
        {
            TRAIN: [
                "POST /v1/train/sft",
                "POST /v1/train/grpo",
                "GET /v1/train/status",
                "GET /v1/train/status/{job_id}",
                "GET /v1/train/queue",
                "DELETE /v1/train/queue/{job_id}",
                "POST /v1/train/stop/{job_id}",
                "POST /api/finetune/start",
                "GET /api/finetune/jobs",
                "GET /api/finetune/status/{job_id}",
                "POST /api/finetune/stop/{job_id}",
            ]
        }
    ),
    "ui": rows({PUBLIC: ["GET /ui", "GET /ui/static/{name}", "GET /ui/session"]}),
    "distillation": rows(
        {
            TRAIN: [
                "POST /v1/distillation",
                "GET /v1/distillation",
                "POST /v1/distillation/estimate",
                "GET /v1/distillation/{job_id}",
                "POST /v1/distillation/{job_id}/cancel",
                "GET /v1/distillation/{job_id}/logs",
                "GET /v1/distillation/{job_id}/artifacts",
            ]
        }
    ),
}
"""The built-in families' rows; each family hands its own to `RouteFamily(access=...)`."""


@dataclass(frozen=True)
class Row:
    family: str
    method: str
    path: str
    access: Access


IGNORED_METHODS = frozenset({"OPTIONS", "HEAD"})
"""Preflights answer for the route they ask about; HEAD is GET's."""


class AccessTable:
    """`(method, path template) -> Access` over the routes of the mounted families."""

    def __init__(self, families: Iterable[RouteFamily]):
        self._rows: dict[tuple[str, str], Row] = {}
        for family in families:
            declared = dict(family.access)
            missing: list[str] = []
            for route in family.router.routes:
                if not isinstance(route, HTTPRoute):
                    continue
                for method in sorted(route.methods - IGNORED_METHODS):
                    key = f"{method} {route.path_format}"
                    access = declared.pop(key, None)
                    if access is None:
                        missing.append(key)
                        continue
                    self._rows[(method, route.path_format)] = Row(
                        family.name, method, route.path_format, access
                    )
            if missing:
                raise ConfigError(
                    f"route family `{family.name}` does not say who may call "
                    f"{', '.join(missing)}: give each route a row in RouteFamily.access"
                )
            if declared:
                raise ConfigError(
                    f"route family `{family.name}` has access rows for routes it does not "
                    f"mount: {', '.join(declared)}"
                )

    def cover(self, routes: Iterable[BaseRoute], family: str, access: Access) -> None:
        """Give every route of the app that no family owns (Litestar's OpenAPI document)
        the row `access`."""
        for route in routes:
            if not isinstance(route, HTTPRoute):
                continue
            for method in sorted(route.methods - IGNORED_METHODS):
                key = (method, route.path_format)
                self._rows.setdefault(key, Row(family, method, route.path_format, access))

    def lookup(self, method: str, path_template: str) -> Row | None:
        method = "GET" if method == "HEAD" else method
        return self._rows.get((method, path_template))

    def rows(self) -> list[Row]:
        return list(self._rows.values())

    def methods(self, path_template: str) -> list[str]:
        """The methods served at a path (for a preflight's allowed methods)."""
        return sorted(method for method, path in self._rows if path == path_template)


def render_markdown(table: AccessTable) -> str:
    """The table as Markdown: one line per route, by family then path."""
    lines = [
        "| family | route | scope | browsers on other origins |",
        "|---|---|---|---|",
    ]
    for row in sorted(table.rows(), key=lambda r: (r.family, r.path, r.method)):
        scope = f"`{row.access.scope}`" if row.access.scope else "none (public)"
        origins = "`[cors] private_origins`" if row.access.private else "`[cors] origins`"
        lines.append(f"| {row.family} | `{row.method} {row.path}` | {scope} | {origins} |")
    return "\n".join(lines) + "\n"
