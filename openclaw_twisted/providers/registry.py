"""Model refs (``provider/model``) to providers, and opening a model with fallbacks in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from ..config import Config, ProviderConfig
from .echo import EchoProvider
from .interface import IModelStream, IProvider, ModelRequest, ProviderError

log = Logger()


def build_provider(config: ProviderConfig, http: object, clock: IReactorTime) -> IProvider:
    """The provider for one ``models.providers`` entry; ``http`` is a treq ``HTTPClient``."""
    if config.api == "echo":
        return EchoProvider(config.name)
    if config.api == "openai-completions":
        from .openai import OpenAICompletionsProvider

        return OpenAICompletionsProvider(config, http, clock)
    if config.api == "anthropic-messages":
        from .anthropic import AnthropicMessagesProvider

        return AnthropicMessagesProvider(config, http, clock)
    raise ProviderError(
        "misconfigured", f"provider {config.name}: api {config.api!r} is not served"
    )


def split_ref(ref: str) -> tuple[str, str]:
    """``"ollama/llama3:8b"`` → ``("ollama", "llama3:8b")``; model ids may contain ``/``."""
    provider, _, model = ref.partition("/")
    return (provider, model) if model else ("", provider)


@attrs.define
class Providers:
    """Every provider the gateway can use, by name; ``echo`` is always there."""

    by_name: dict[str, IProvider]
    models: dict[str, tuple[str, ...]] = attrs.Factory(dict)

    @classmethod
    def from_config(cls, config: Config, http: object, clock: IReactorTime) -> Providers:
        by_name: dict[str, IProvider] = {"echo": EchoProvider()}
        models: dict[str, tuple[str, ...]] = {"echo": ("echo",)}
        for p in config.providers:
            by_name[p.name] = build_provider(p, http, clock)
            models[p.name] = tuple(m.id for m in p.models)
        return cls(by_name, models)

    @classmethod
    def of(cls, providers: Iterable[IProvider]) -> Providers:
        """Providers given directly (tests, embedding): each under its ``name``."""
        by_name: dict[str, IProvider] = {"echo": EchoProvider()}
        for p in providers:
            verifyObject(IProvider, p)
            by_name[p.name] = p
        return cls(by_name)

    def resolve(self, ref: str) -> tuple[IProvider, str]:
        """The provider and the provider's own model id for ``ref``."""
        name, model = split_ref(ref)
        if not name:
            # A bare id: the provider that lists it, else a provider of that name.
            owner = next((n for n, ids in self.models.items() if model in ids), None)
            if owner is None and model in self.by_name:
                owner, model = model, (self.models.get(model) or (model,))[0]
            name = owner or model
        provider = self.by_name.get(name)
        if provider is None:
            raise ProviderError(
                "misconfigured",
                f"model {ref!r}: no provider {name!r} is configured under models.providers",
            )
        return provider, model

    def all_models(self) -> list[tuple[str, str]]:
        """``(provider, model id)`` for every model the config lists."""
        return [(name, m) for name, ids in self.models.items() for m in ids]

    async def open(
        self, refs: Sequence[str], make: Callable[[str], ModelRequest]
    ) -> tuple[str, IModelStream]:
        """
        Open the first model in ``refs`` that accepts; ``make(model_id)`` builds its request.

        Only failures where another model may do better (unreachable, 5xx, 429, timeout) move
        on to the next ref; the last failure is raised when none accepts.
        """
        last: ProviderError | None = None
        for ref in refs:
            try:
                provider, model = self.resolve(ref)
                stream = await provider.open(make(model))
            except ProviderError as e:
                last = e
                if not e.try_next_model and e.kind != "misconfigured":
                    raise
                if ref != refs[-1]:
                    log.warn(
                        "model {ref} failed ({kind}: {msg}); trying the next fallback",
                        ref=ref,
                        kind=e.kind,
                        msg=e.message,
                    )
                continue
            return ref, stream
        assert last is not None, "no model refs"
        raise last
