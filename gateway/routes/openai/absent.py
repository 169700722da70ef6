"""OpenAI routes for capabilities this server does not have (speech, transcription).

They answer a 404 in OpenAI's error shape that names the capability, with
`x-should-retry: false`: the openai SDK retries 5xx answers (501 included) three times,
and a retry cannot help. A plugin provides the capability by registering a route family
(`register_routes`) that mounts these paths instead (switch this family's off in
`[routes]`, or serve them under its own family).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post

ABSENT = {
    "/v1/audio/transcriptions": "speech-to-text transcription",
    "/v1/audio/translations": "speech translation",
    "/v1/audio/speech": "text-to-speech",
}
NO_RETRY = {"x-should-retry": "false"}


class AbsentCapabilityController(Controller):
    path = "/"

    @post(list(ABSENT), status_code=404)
    async def absent(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        path = request.url.path
        message = (
            f"This server has no {ABSENT[path]} ({path}). A gateway plugin can provide it "
            "by registering a route family with the `register_routes` hook."
        )
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "capability_not_available",
            }
        }
        return Response(body, status_code=404, headers=NO_RETRY)
