"""`/api/admin/*`: admin scope, and only working when `[kobold] admin = true`.

Answered as KoboldCpp answers them. With the admin API off (KoboldCpp without `--admin`)
every route still answers 200: `list_options` an empty list, the others
`{"success": false, ...}` with zero counts. A `reload_config` naming no config of the
admin directory, a `save_state` with nothing to save and a `load_state` of an empty slot
are `{"success": false}` too. State slots are 0-2; a larger slot is slot 0 and a negative
one fails, as in KoboldCpp.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any

from gateway_schemas.kobold import ReloadConfigRequest, StateRequest
from litestar import Controller, get, post
from litestar.di import NamedDependency

from gateway.gateway import Gateway
from gateway.routes.kobold.body import documented, read_body
from gateway.routes.kobold.state import KoboldState, SavedState

CONFIG_FILE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.toml$"
STATE_SLOTS = 3


def _admin_dir(gateway: Gateway) -> Path | None:
    """The admin directory, or None when the admin API is off."""
    knobs = gateway.settings.kobold
    if not knobs.admin:
        return None
    folder = knobs.admin_dir
    return Path(folder).expanduser() if folder else gateway.settings.data_path() / "kobold-configs"


def _state_path(gateway: Gateway, index: int) -> Path:
    return gateway.settings.data_path() / "kobold-states" / f"state-{index}.bin"


def _state_slot(data: dict[str, Any] | None) -> int:
    slot = read_body(data, StateRequest, optional=True).slot
    return slot if slot < STATE_SLOTS else 0


class KoboldAdminController(Controller):
    path = "/api/admin"

    @get("/list_options")
    async def list_options(self, gateway: NamedDependency[Gateway]) -> list[str]:
        folder = _admin_dir(gateway)
        return sorted(p.name for p in folder.glob("*.toml")) if folder else []

    @post("/reload_config", status_code=200)
    async def reload_config(
        self,
        gateway: NamedDependency[Gateway],
        data: Annotated[Any, documented(ReloadConfigRequest)] = None,
    ) -> dict[str, Any]:
        from gateway.settings import load_settings

        name = read_body(data, ReloadConfigRequest, optional=True).filename
        folder = _admin_dir(gateway)
        if folder is None or not re.match(CONFIG_FILE, name) or not (folder / name).is_file():
            return {"success": False}
        settings = await asyncio.to_thread(load_settings, folder / name)
        await gateway.models.replace(
            settings.served_models(), gateway.backends, gateway.settings.data_path()
        )
        return {"success": True}

    @post("/check_state", status_code=200)
    async def check_state(
        self, gateway: NamedDependency[Gateway], kobold: NamedDependency[KoboldState]
    ) -> dict[str, Any]:
        if _admin_dir(gateway) is None:
            return {"success": False, "old_states": [], "new_state_size": 0, "new_tokens": 0}
        last = kobold.last
        tokens = last.final.usage.prompt_tokens if last and last.final and last.final.usage else 0
        old = [
            {"tokens": kobold.saved[i].tokens, "size": kobold.saved[i].size}
            if i in kobold.saved
            else {"tokens": 0, "size": 0}
            for i in range(STATE_SLOTS)
        ]
        return {"success": True, "old_states": old, "new_state_size": 0, "new_tokens": tokens}

    @post("/save_state", status_code=200)
    async def save_state(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(StateRequest)] = None,
    ) -> dict[str, Any]:
        index = _state_slot(data)
        last = kobold.last
        ready = last is not None and last.final is not None and last.final.slot is not None
        if _admin_dir(gateway) is None or index < 0 or not ready:
            return {"success": False, "new_state_size": 0, "new_tokens": 0}
        assert last is not None and last.final is not None and last.final.slot is not None
        backend = gateway.models.get(last.model)
        result = await backend.slot_action(last.final.slot, "save", _state_path(gateway, index))
        saved = SavedState(
            tokens=int(result.get("n_saved", 0)),
            size=int(result.get("n_written", 0)),
            slot=last.final.slot,
            model=last.model,
        )
        kobold.saved[index] = saved
        return {"success": True, "new_state_size": saved.size, "new_tokens": saved.tokens}

    @post("/load_state", status_code=200)
    async def load_state(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(StateRequest)] = None,
    ) -> dict[str, Any]:
        index = _state_slot(data)
        saved = kobold.saved.get(index)
        if _admin_dir(gateway) is None or saved is None:
            return {"success": False, "new_tokens": 0}
        backend = gateway.models.get(saved.model)
        result = await backend.slot_action(saved.slot, "restore", _state_path(gateway, index))
        return {"success": True, "new_tokens": int(result.get("n_restored", 0))}

    @post("/clear_state", status_code=200)
    async def clear_state(
        self, gateway: NamedDependency[Gateway], kobold: NamedDependency[KoboldState]
    ) -> dict[str, Any]:
        if _admin_dir(gateway) is None:
            return {"success": False}
        for index in list(kobold.saved):
            _state_path(gateway, index).unlink(missing_ok=True)
        kobold.saved.clear()
        return {"success": True}
