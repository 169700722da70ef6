"""The KoboldCpp dialect: `/api/v1` (again under `/api/latest`), `/api/extra`,
`/api/admin` (off unless `[kobold] admin = true`), `/.well-known/serviceinfo`,
and the image, audio and web-search routes answered as KoboldCpp answers them with those
features off (`probes`). Bodies are read as leniently as KoboldCpp reads them (`body`),
values clamped as it clamps them (`translate`). Errors in KoboldAI's shape.
Settings: `[kobold]` (see `gateway.settings.KoboldSettings`). Story saves and the
multiplayer story (`stories`) live in the gateway's database (`database_url`: the data
directory's `gateway.db`, or PostgreSQL shared by replicas; `gateway.storage`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Router
from litestar.di import Provide

from gateway.hookspecs import hookimpl
from gateway.routes.access import TABLE
from gateway.routes.family import RouteFamily

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.gateway import Gateway

FAMILY = "kobold"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.database import open_story_store
    from gateway.routes.kobold.admin import KoboldAdminController
    from gateway.routes.kobold.controllers import KoboldController
    from gateway.routes.kobold.errors import EXCEPTION_HANDLERS
    from gateway.routes.kobold.probes import KoboldPropsController, ProbeController
    from gateway.routes.kobold.state import KoboldState
    from gateway.routes.kobold.stories import StoryController

    state = KoboldState(open_story_store(gateway.settings.database()))

    handlers: list[type] = [
        KoboldController,
        StoryController,
        KoboldAdminController,
        ProbeController,
    ]
    access = dict(TABLE[FAMILY])
    if gateway.settings.family_enabled("llamacpp"):
        del access["GET /props"]  # the llama.cpp family's /props serves Kobold frontends too
    else:
        handlers.append(KoboldPropsController)
    router = Router(
        path="/",
        route_handlers=handlers,
        exception_handlers=EXCEPTION_HANDLERS,
        dependencies={"kobold": Provide(lambda: state, sync_to_thread=False)},
        opt={"family": FAMILY},
        tags=["kobold"],
    )
    register(RouteFamily(FAMILY, router, "KoboldCpp / KoboldAI United API", access=access))
