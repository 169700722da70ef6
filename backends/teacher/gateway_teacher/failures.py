"""One classifier of upstream failures, and the error a client finally sees.

Every failed attempt becomes an `UpstreamProblem` saying, once, what the router does with
it (LiteLLM's rules):

| failure                              | retry | cool the deployment | otherwise          |
| ------------------------------------ | ----- | ------------------- | ------------------ |
| 408, 429, 5xx, timeout               | yes   | yes                 |                    |
| 409, connection refused or broken    | yes   | no                  |                    |
| 401, 404                             | no    | yes                 | next group         |
| 403                                  | no    | no                  | next group         |
| any other 4xx                        | no    | no                  | the client's 400   |

What is left after retries and fallbacks: a timeout is a 504 (`UpstreamTimeout`), a 429 a
429 (`UpstreamRateLimited`), anything else a 502 (`UpstreamFailure`), each with the
upstream's own message; a refused request is a 400 with the upstream's message.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from gateway.errors import GatewayError, InvalidRequest, UpstreamFailure, UpstreamTimeout

Kind = Literal["status", "timeout", "connection", "stream"]
RETRY_STATUSES = frozenset({408, 409, 429})
COOLDOWN_STATUSES = frozenset({401, 404, 408, 429})
GROUP_STATUSES = frozenset({401, 403, 404})
"""Statuses that end the group's attempts but not the fallbacks' (a bad key, no model)."""
MESSAGE_LIMIT = 1000


class UpstreamRateLimited(GatewayError):
    """The upstream kept answering 429 (too many requests) through retries and fallbacks."""

    status = 429
    kind = "rate_limit_error"


class UpstreamProblem(Exception):
    """One failed attempt at one deployment, classified."""

    def __init__(
        self,
        target: str,
        kind: Kind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.target, self.kind, self.message = target, kind, message
        self.status, self.retry_after = status, retry_after
        self.param, self.code = param, code

    @property
    def retryable(self) -> bool:
        if self.kind != "status":
            return True
        assert self.status is not None
        return self.status in RETRY_STATUSES or self.status >= 500

    @property
    def cooldown(self) -> bool:
        if self.kind in ("timeout", "stream"):
            return True
        if self.kind == "connection":
            return False
        assert self.status is not None
        return self.status in COOLDOWN_STATUSES or self.status >= 500

    @property
    def refused(self) -> bool:
        """The upstream refused the request itself (a 400): no other upstream will take it."""
        return not self.retryable and self.status not in GROUP_STATUSES

    def describe(self) -> str:
        if self.kind == "status":
            return f"Upstream `{self.target}` answered {self.status}: {self.message}"
        if self.kind == "timeout":
            return f"Upstream `{self.target}` did not answer in time: {self.message}"
        if self.kind == "connection":
            return f"Upstream `{self.target}` could not be reached: {self.message}"
        return f"Upstream `{self.target}` broke off its stream: {self.message}"

    def error(self, attempts: int = 1) -> GatewayError:
        """The error the client gets when this was the last failure."""
        if self.refused:
            return InvalidRequest(
                f"Upstream `{self.target}` refused the request: {self.message}",
                param=self.param,
                code=self.code,
            )
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        message = self.describe() + tries
        if self.kind == "timeout":
            return UpstreamTimeout(message, code="upstream_timeout")
        if self.status == 429:
            return UpstreamRateLimited(message, code="rate_limit_exceeded")
        return UpstreamFailure(message, code="upstream_error")


def from_response(
    target: str, status: int, headers: Mapping[str, str], body: bytes
) -> UpstreamProblem:
    """The problem of an error response: its status, the upstream's message (OpenAI's
    `{"error": {"message", "param", "code"}}`, else the body's text) and `Retry-After`."""
    message, param, code = _message(body)
    return UpstreamProblem(
        target,
        "status",
        message or f"HTTP {status}",
        status=status,
        retry_after=retry_after(headers),
        param=param,
        code=code,
    )


def _message(body: bytes) -> tuple[str, str | None, str | None]:
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", errors="replace").strip()[:MESSAGE_LIMIT], None, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code")
        return (
            str(error["message"])[:MESSAGE_LIMIT],
            error.get("param") if isinstance(error.get("param"), str) else None,
            str(code) if code is not None else None,
        )
    if isinstance(data, dict):  # {"error": "..."}, {"detail": ...}, {"message": ...}
        for key in ("error", "detail", "message"):
            if data.get(key):
                return str(data[key])[:MESSAGE_LIMIT], None, None
    return body.decode("utf-8", errors="replace").strip()[:MESSAGE_LIMIT], None, None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
