"""OpenAI-style JSON error envelopes and plain responses, written onto a twisted.web request."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

JSON_TYPE = b"application/json; charset=utf-8"


def json_body(request: IRequest, status: int, body: Any, *, no_store: bool = False) -> bytes:
    """Set status and JSON headers on ``request``; return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_TYPE)
    if no_store:
        request.setHeader(b"cache-control", b"no-store")
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
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
