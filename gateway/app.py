"""The app factory: `create_app(settings) -> Litestar`, with one InitPlugin mounting the families."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins import InitPlugin

from gateway import __version__
from gateway.errors import ConfigError
from gateway.gateway import Gateway
from gateway.middleware import GatewayMiddleware, add_cors_headers
from gateway.routes.access import OPENAPI, AccessTable
from gateway.routes.family import RouteFamily
from gateway.routes.openai.errors import EXCEPTION_HANDLERS
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    import pluggy


class GatewayPlugin(InitPlugin):
    """Mounts the enabled route families and wires the gateway into the app."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.families = collect_families(gateway)
        self.access = AccessTable(self.mounted)

    @property
    def mounted(self) -> list[RouteFamily]:
        return [f for f in self.families if self.gateway.settings.family_enabled(f.name)]

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        gateway = self.gateway

        def provide_gateway() -> Gateway:
            return gateway

        app_config.route_handlers.extend(f.router for f in self.mounted)
        app_config.dependencies["gateway"] = Provide(provide_gateway, sync_to_thread=False)
        app_config.middleware.append(GatewayMiddleware(gateway, self.access))
        app_config.before_send.append(add_cors_headers)
        app_config.on_startup.append(gateway.startup)
        app_config.on_shutdown.append(gateway.shutdown)
        # Routes outside any family (no such route, the OpenAPI document) answer errors in
        # OpenAI's shape, the dialect most clients speak.
        for exc_type, handler in EXCEPTION_HANDLERS.items():
            app_config.exception_handlers.setdefault(exc_type, handler)
        return app_config


def collect_families(gateway: Gateway) -> list[RouteFamily]:
    families: dict[str, RouteFamily] = {}

    def register(family: RouteFamily) -> None:
        if family.name in families:
            raise ConfigError(f"route family `{family.name}` is registered twice")
        families[family.name] = family

    gateway.hook.register_routes(register=register, gateway=gateway)
    unknown = sorted(set(gateway.settings.routes) - set(families))
    if unknown:
        raise ConfigError(
            f"invalid settings: routes.{unknown[0]}: no such route family "
            f"(known: {', '.join(sorted(families))})"
        )
    return list(families.values())


def create_app(
    settings: Settings | None = None,
    *,
    gateway: Gateway | None = None,
    pm: pluggy.PluginManager | None = None,
) -> Litestar:
    gateway = gateway or Gateway(settings or load_settings(), pm)
    plugin = GatewayPlugin(gateway)
    app = Litestar(
        plugins=[plugin],
        openapi_config=OpenAPIConfig(
            title="gateway",
            version=__version__,
            description="One server for every local-LLM API dialect.",
            path="/schema",
        ),
        debug=False,
        logging_config=None,  # logging is the host's: `gateway serve` configures it
    )
    plugin.access.cover(app.routes, "openapi", OPENAPI)
    return app
