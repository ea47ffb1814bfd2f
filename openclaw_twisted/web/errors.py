"""OpenAI-style JSON error envelopes and plain responses, written onto a twisted.web request."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.iweb import IRequest

from .._json import dumps
from ..agents.events import RunError

JSON_TYPE = b"application/json; charset=utf-8"
#: Reason phrases twisted.web does not know (it would write "Unknown Status").
REASONS = {
    421: b"Misdirected Request",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}


def json_body(request: IRequest, status: int, body: Any, *, no_store: bool = False) -> bytes:
    """Set status and JSON headers on ``request``; return the encoded body."""
    request.setResponseCode(status, REASONS.get(status))
    request.setHeader(b"content-type", JSON_TYPE)
    if no_store:
        request.setHeader(b"cache-control", b"no-store")
    data = dumps(body)
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def error_envelope(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API returns it."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body(
    request: IRequest,
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry: bool | None = None,
) -> bytes:
    """An error response; non-transient errors say ``x-should-retry: false`` (CONTRACT §4.1)."""
    if retry is None:
        retry = status in (408, 429) or status >= 500
    if not retry:
        request.setHeader(b"x-should-retry", b"false")
    return json_body(request, status, error_envelope(message, type_, param=param, code=code))


def not_found(request: IRequest) -> bytes:
    """The plain 404 of a route that does not exist (or an endpoint that is disabled)."""
    request.setResponseCode(404)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"Not Found"


@attrs.frozen
class ErrorReply:
    """An error as the HTTP edge renders it: status, envelope fields, extra headers."""

    status: int
    message: str
    type: str
    code: str | None
    param: str | None = None
    retry: bool | None = None
    retry_after: str | None = None

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.type, param=self.param, code=self.code)

    def render(self, request: IRequest) -> bytes:
        if self.retry_after:
            request.setHeader(b"retry-after", self.retry_after.encode("ascii", "replace"))
        return error_body(
            request,
            self.status,
            self.message,
            self.type,
            param=self.param,
            code=self.code,
            retry=self.retry,
        )


def run_error_reply(error: RunError) -> ErrorReply:
    """CONTRACT §4.6: how a failed agent run is told to an OpenAI client."""
    kind, message = error.kind, error.message
    if kind == "unavailable":
        return ErrorReply(
            502, f"Model provider unavailable: {message}", "api_error", "upstream_unavailable"
        )
    if kind == "auth":
        return ErrorReply(
            502,
            "The model provider refused the gateway's credentials.",
            "api_error",
            "upstream_auth",
            retry=False,
        )
    if kind == "rate_limited":
        return ErrorReply(
            429,
            "The model provider is rate limiting requests.",
            "rate_limit_error",
            "upstream_rate_limited",
            retry_after=error.retry_after,
        )
    if kind == "upstream_error":
        return ErrorReply(502, f"Model provider error: {message}", "api_error", "upstream_error")
    if kind == "timeout":
        return ErrorReply(
            504,
            f"The model provider did not answer in time: {message}",
            "timeout",
            "upstream_timeout",
        )
    if kind == "bad_request":
        return ErrorReply(
            400,
            f"The model provider refused the request: {message}",
            "invalid_request_error",
            "upstream_bad_request",
        )
    if kind == "misconfigured":
        return ErrorReply(
            502,
            f"Model provider misconfigured: {message}",
            "api_error",
            "upstream_misconfigured",
            retry=False,
        )
    if kind == "overloaded":
        return ErrorReply(
            503, message, "api_error", "gateway_overloaded", retry_after=error.retry_after
        )
    if kind == "agent_timeout":
        return ErrorReply(504, message, "timeout", "agent_timeout")
    if kind == "shutdown":
        return ErrorReply(503, message, "api_error", "shutdown")
    if kind == "session_store_unavailable":
        return ErrorReply(
            503, message, "api_error", "session_store_unavailable", retry_after=error.retry_after
        )
    if kind == "aborted":
        return ErrorReply(503, message, "api_error", "aborted")
    if kind == "tool_rounds":
        # The model kept calling the agent's tools after it was told to answer.
        return ErrorReply(502, message, "api_error", "tool_rounds", retry=False)
    # internal_error and anything unforeseen: the details are in the log only.
    return ErrorReply(500, "Internal error.", "api_error", "internal_error")
