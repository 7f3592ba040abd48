"""`moa serve`: topologies behind an OpenAI-compatible HTTP API (the `serve` extra: uvicorn + Starlette).

Each topology is a model named by its file's stem; `POST /v1/chat/completions` runs it on the
conversation, `GET /v1/models` lists them. One Session's worth of shared parts serves every
topology and every request: one bound on calls in flight, one response cache, one set of provider
clients (see `topologies`). The face's entry point is `serve(...)`; `moa_dsl.cli.serve` calls it.
"""

from __future__ import annotations

from .server import serve

__all__ = ["serve"]
