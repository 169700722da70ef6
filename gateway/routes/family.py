"""`RouteFamily`: what `register_routes` hands the host."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Router


@dataclass(frozen=True)
class RouteFamily:
    """A dialect's routes. `name` is the key of `[routes]` that switches it on or off.

    The router's handlers carry `opt={"family": name, "scope": ...}`; use `family_router`
    to build one with those set and the family's error handlers attached.
    """

    name: str
    router: Router
    description: str = ""
