"""`RouteFamily`: what `register_routes` hands the host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from litestar import Router

from gateway.routes.access import Access


@dataclass(frozen=True)
class RouteFamily:
    """A dialect's routes. `name` is the key of `[routes]` that switches it on or off.

    Give the router `opt={"family": name}` (metrics and errors are counted by it) and the
    family's error handlers. `access` says who may call each route, `"METHOD /path"` ->
    `Access` (`gateway.routes.access`); the host refuses to start without a row for every
    route the router mounts.
    """

    name: str
    router: Router
    description: str = ""
    access: Mapping[str, Access] = field(default_factory=dict)
