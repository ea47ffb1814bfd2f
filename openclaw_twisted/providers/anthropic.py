"""Placeholder: replaced by the real provider."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from .interface import IModelStream, IProvider, ModelRequest, ProviderError


@implementer(IProvider)
class AnthropicMessagesProvider:
    def __init__(self, config: Any, http: Any, clock: Any) -> None:
        self.name = config.name

    def open(self, request: ModelRequest) -> Deferred[IModelStream]:
        return fail(ProviderError("misconfigured", "provider api not implemented yet"))
