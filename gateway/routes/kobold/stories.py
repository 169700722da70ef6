"""Stories kept by the server: the save slots (`/api/extra/data/*`), the multiplayer story
(`/api/extra/multiplayer/*`) and the preloaded story, answered as KoboldCpp answers them
(KoboldAI Lite reads these replies field by field).

- `data/save`: `slot` is read as KoboldCpp reads it (a number, or text that parses as
  one); a slot outside 0..`save_slots`-1 is a 400, empty `data` erases the slot, a
  missing title is "Untitled Save", a story over 10 MB is a 400. Refusals carry
  KoboldCpp's `{"success": false, "error"}` beside the Kobold `detail`, since Lite shows
  `error` to its user.
- `data/load`: `{"success": true, "data": {"title", "format", "data"}}`, as KoboldCpp
  answers (Lite reads `data.data`; koboldcpp-openapi.json types `data` as a string, which
  KoboldCpp does not send); an empty or invalid slot is `{"success": false, "data": null}`.
- `multiplayer/status`: `idle` is 1 when nothing generates and no other participant said
  it was busy (`senderbusy`, or a story update) in the last 6 seconds, else 0, as
  KoboldCpp decides it (Lite shows the session as active otherwise).
- `multiplayer/getstory`: the stored story as plain text (Lite reads the body as the
  compressed story), empty when there is none.
- `multiplayer/setstory`: no story is a 400 as in KoboldCpp; `full_update` (default false)
  starts a new major turn; a story over 3 MB is a 400.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from gateway_schemas.kobold import (
    DataLoadRequest,
    DataSaveRequest,
    MultiplayerStatusRequest,
    SetStoryRequest,
)
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency

from gateway.errors import InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.kobold.body import documented, read_body
from gateway.routes.kobold.errors import StoryRefused
from gateway.routes.kobold.state import KoboldState

SAVE_LIMIT = 10 * 1024 * 1024
MULTIPLAYER_LIMIT = 3 * 1024 * 1024


class StoryController(Controller):
    path = "/api/extra"

    @get("/preloadstory")
    async def preload_story(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        path = gateway.settings.kobold.preload_story
        if not path:
            return {}
        try:
            story: dict[str, Any] = json.loads(Path(path).expanduser().read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"The preloaded story could not be read: {exc}") from exc
        return story

    @post("/data/save", status_code=200)
    async def data_save(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(DataSaveRequest)] = None,
    ) -> dict[str, Any]:
        body = read_body(data, DataSaveRequest)
        slots = gateway.settings.kobold.save_slots
        if not 0 <= body.slot < slots:
            raise StoryRefused(f"No story submitted or invalid slot (0 to {slots - 1})!")
        if len(body.data) > SAVE_LIMIT:
            raise StoryRefused("Story is too long!")
        if body.data:
            title = body.title or "Untitled Save"
            await kobold.store.save_story(body.slot, title, body.format, body.data)
        else:
            await kobold.erase_story(body.slot)
        return {"success": True, "error": ""}

    @post("/data/load", status_code=200)
    async def data_load(
        self,
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(DataLoadRequest)] = None,
    ) -> dict[str, Any]:
        body = read_body(data, DataLoadRequest, optional=True)
        row = await kobold.store.load_story(body.slot) if body.slot >= 0 else None
        if row is None:
            return {"success": False, "data": None}
        story = {"title": row["title"], "format": row["format"], "data": row["data"]}
        return {"success": True, "data": story}

    @post("/data/list", status_code=200)
    async def data_list(
        self, gateway: NamedDependency[Gateway], kobold: NamedDependency[KoboldState]
    ) -> list[str]:
        return await kobold.store.story_titles(gateway.settings.kobold.save_slots)

    @post("/multiplayer/status", status_code=200)
    async def multiplayer_status(
        self,
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(MultiplayerStatusRequest)] = None,
    ) -> dict[str, Any]:
        body = read_body(data, MultiplayerStatusRequest, optional=True)
        if body.senderbusy:
            kobold.player_busy(body.sender)
        row = await kobold.store.multiplayer()
        # Turns as strings: koboldcpp-openapi.json types them so.
        return {
            "turn_major": str(row["turn_major"] if row else 0),
            "turn_minor": str(row["turn_minor"] if row else 0),
            "idle": kobold.multiplayer_idle(body.sender),
            "data_format": row["data_format"] if row else "",
        }

    @post("/multiplayer/getstory", status_code=200, media_type="text/plain")
    async def multiplayer_getstory(self, kobold: NamedDependency[KoboldState]) -> Response[str]:
        row = await kobold.store.multiplayer()
        return Response(row["data"] if row else "", media_type="text/plain")

    @post("/multiplayer/setstory", status_code=200)
    async def multiplayer_setstory(
        self,
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(SetStoryRequest)] = None,
    ) -> dict[str, Any]:
        body = read_body(data, SetStoryRequest)
        if not body.data:
            raise StoryRefused("No story submitted!")
        if len(body.data) > MULTIPLAYER_LIMIT:
            raise StoryRefused("Story is too long!")
        kobold.player_busy(body.sender)
        row = await kobold.store.set_multiplayer(
            body.data, body.data_format, body.sender, body.full_update
        )
        return {
            "success": True,
            "turn_major": str(row["turn_major"]),
            "turn_minor": str(row["turn_minor"]),
            "idle": kobold.multiplayer_idle(body.sender),
            "data_format": row["data_format"],
        }
