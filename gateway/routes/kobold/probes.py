"""The capabilities this server does not have, answered as KoboldCpp answers them when
they are off, so that KoboldAI Lite and SillyTavern, which probe them at start-up, carry
on; and the identity routes (`/.well-known/serviceinfo`, `/props`).

What KoboldCpp does with each feature off (koboldcpp.py, `do_GET` / `do_POST`, and the
C++ adapters that return an empty result when their model is not loaded), and so this
server (`/api/extra/version` says each is off):

- `GET /sdapi/v1/sd-models`, `/sdapi/v1/samplers`, `/sdapi/v1/upscalers`,
  `/sdapi/v1/latent-upscale-modes`: `[]`.
- `GET /sdapi/v1/options`: `{"samples_format": "png", "sd_model_checkpoint": "inactive"}`.
- `POST /sdapi/v1/txt2img`, `/sdapi/v1/img2img`: `{"images": [""], "parameters": {},
  "info": ""}` (no image).
- `POST /api/extra/transcribe`: `{"text": ""}`.
- `POST /api/extra/tts`: an empty `audio/wav` body.
- `POST /api/extra/websearch`: `[]` (no results).
- `POST /sdapi/v1/interrogate`: refused, "No Vision model loaded". KoboldCpp answers that
  with a 503; here it is a 400, because nothing will change on a retry and a 5xx is
  reserved for this server's own failures.

The request bodies of these routes are not read: there is nothing to do with them.
`/v1/audio/*` (OpenAI's paths, which KoboldCpp also serves) belong to the OpenAI family
(`gateway.routes.openai.absent`).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency

from gateway import __version__
from gateway.errors import GatewayError, Unsupported
from gateway.gateway import Gateway
from gateway.routes.kobold.controllers import _context, _model

NO_IMAGE_MODEL = "inactive"
"""KoboldCpp's name for a model that is not loaded."""


class ProbeController(Controller):
    path = "/"

    @get(
        [
            "/sdapi/v1/sd-models",
            "/sdapi/v1/samplers",
            "/sdapi/v1/upscalers",
            "/sdapi/v1/latent-upscale-modes",
        ]
    )
    async def image_lists(self) -> list[Any]:
        return []

    @get("/sdapi/v1/options")
    async def image_options(self) -> dict[str, Any]:
        return {"samples_format": "png", "sd_model_checkpoint": NO_IMAGE_MODEL}

    @post(["/sdapi/v1/txt2img", "/sdapi/v1/img2img"], status_code=200)
    async def images(self) -> dict[str, Any]:
        return {"images": [""], "parameters": {}, "info": ""}

    @post("/sdapi/v1/interrogate", status_code=200)
    async def interrogate(self) -> None:
        raise Unsupported("No Vision model loaded: this server cannot caption images.")

    @post("/api/extra/transcribe", status_code=200)
    async def transcribe(self) -> dict[str, Any]:
        return {"text": ""}

    @post("/api/extra/tts", status_code=200, media_type="audio/wav")
    async def tts(self) -> Response[bytes]:
        return Response(b"", media_type="audio/wav")

    @post("/api/extra/websearch", status_code=200)
    async def websearch(self) -> list[Any]:
        return []

    @get("/.well-known/serviceinfo")
    async def serviceinfo(self) -> dict[str, Any]:
        return {
            "version": "0.2",
            "software": {
                "name": "gateway",
                "version": __version__,
                "repository": "",
                "homepage": "",
            },
            "api": {
                "koboldai": {"name": "KoboldAI API", "rel_url": "/api", "documentation": ""},
                "openai": {"name": "OpenAI API", "rel_url": "/v1", "documentation": ""},
            },
        }


class KoboldPropsController(Controller):
    """`GET /props` as KoboldCpp answers it, when the llama.cpp family does not serve it."""

    path = "/"

    @get("/props")
    async def props(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        backend = gateway.models.get(_model(gateway))
        try:
            slots = len(backend.slots())
        except GatewayError:
            slots = 1
        return {
            "chat_template": backend.chat_template() or "",
            "total_slots": slots,
            "default_generation_settings": {"n_ctx": _context(gateway, backend)},
        }
