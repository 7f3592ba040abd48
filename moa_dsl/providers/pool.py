"""The providers of one run: `env(...)` values resolved at run start, each provider built on first use.

Built-in providers read their keys from the environment (`TOGETHER_API_KEY`, ...); `ollama` and
`local` need none. `check_keys` reports every missing variable in one ConfigError before any call,
so a run never spends money on half a topology and then stops for a missing key.
"""

from __future__ import annotations

import importlib
import os
from typing import Iterable, Mapping

import httpx

from ..config import BASE_URL_FALLBACKS, EnvRef, ProviderConfig
from ..errors import ConfigError
from .anthropic import AnthropicProvider
from .base import Provider
from .http import Backoff
from .openai import OpenAIProvider
from .replicas import ReplicatedProvider

__all__ = ["ProviderPool"]

_HTTP_KINDS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}


class ProviderPool:
    def __init__(
        self,
        configs: Mapping[str, ProviderConfig],
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: Backoff | None = None,
        verbose: bool = False,
    ):
        self._configs = dict(configs)
        self._verbose = verbose  # llama.cpp's own logs, for the embedded runtime
        self._environ = os.environ if environ is None else environ
        self._transport = transport
        self._backoff = backoff
        self._providers: dict[str, Provider] = {}

    def check_keys(self, names: Iterable[str]) -> None:
        """Raise one ConfigError naming every environment variable the given providers lack."""
        missing: dict[str, list[str]] = {}  # variable -> providers that need it
        for name in dict.fromkeys(names):
            for variable in self._missing(self._config(name)):
                missing.setdefault(variable, []).append(name)
        if missing:
            parts = [f"{var} (provider {', '.join(users)})" for var, users in missing.items()]
            raise ConfigError(
                f"set {_join(parts)} in the environment: the run needs "
                f"{'it' if len(parts) == 1 else 'them'} before any call is made"
            )

    def get(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = self._build(self._config(name))
        return provider

    async def aclose(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()

    # -- internals --------------------------------------------------------------------------------
    def _config(self, name: str) -> ProviderConfig:
        try:
            return self._configs[name]
        except KeyError:
            known = ", ".join(sorted(self._configs)) or "none"
            raise ConfigError(f"unknown provider {name!r} (known: {known})") from None

    def _missing(self, cfg: ProviderConfig) -> list[str]:
        if cfg.kind == "local":
            return []
        refs = [cfg.api_key, *cfg.headers.values()]
        if isinstance(cfg.base_url, EnvRef) and cfg.base_url.name not in BASE_URL_FALLBACKS:
            refs.append(cfg.base_url)  # a list of replicas is literal URLs: nothing to look up
        return [ref.name for ref in refs if isinstance(ref, EnvRef) and not self._resolve(ref)]

    def _resolve(self, value: str | EnvRef | None) -> str | None:
        if not isinstance(value, EnvRef):
            return value
        # A .env file with CRLF leaves a `\r` behind: strip it, else h11 rejects the header and
        # quotes the key in its message. Control characters inside are an error that names the
        # variable, never the value.
        raw = (self._environ.get(value.name) or "").strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            raise ConfigError(
                f"the environment variable {value.name} contains control characters "
                "(a line break or tab inside the value?): set it to the bare value"
            )
        return raw or None  # an empty variable counts as unset

    def _build(self, cfg: ProviderConfig) -> Provider:
        if cfg.kind == "local":
            local = importlib.import_module(f"{__package__}.local.llamacpp")  # xllamacpp itself is checked on first use
            return local.LocalProvider(name=cfg.name, max_concurrency=cfg.max_concurrency, verbose=self._verbose)
        cls = _HTTP_KINDS.get(cfg.kind)
        if cls is None:
            raise ConfigError(f"provider {cfg.name}: unknown kind {cfg.kind!r}")
        self.check_keys([cfg.name])
        if isinstance(cfg.base_url, tuple):  # replicas of one server, literal URLs
            urls: tuple[str, ...] = cfg.base_url
        else:
            base_url = self._resolve(cfg.base_url)
            if base_url is None and isinstance(cfg.base_url, EnvRef):
                base_url = BASE_URL_FALLBACKS.get(cfg.base_url.name)
            urls = (base_url,) if base_url else ()
        if not urls:
            raise ConfigError(f"provider {cfg.name}: no base_url")
        headers = {k: self._resolve(v) or "" for k, v in cfg.headers.items()}
        api_key = self._resolve(cfg.api_key)
        # One client per URL, each with its own connections and max_concurrency; more than one are
        # routed between by a ReplicatedProvider (replicas.py).
        clients = [
            cls(
                name=cfg.name,
                base_url=url,
                api_key=api_key,
                headers=headers,
                max_concurrency=cfg.max_concurrency,
                transport=self._transport,
                backoff=self._backoff,
                max_response_bytes=cfg.max_response_bytes,
            )
            for url in urls
        ]
        if len(clients) == 1:
            return clients[0]
        return ReplicatedProvider(cfg.name, clients, backoff=self._backoff)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
