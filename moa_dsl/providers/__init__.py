"""Providers: how one call reaches a model. `base.py` is the contract the runner codes against."""

from __future__ import annotations

from .anthropic import AnthropicProvider
from .base import CallRequest, Completion, Provider
from .http import Backoff
from .openai import OpenAIProvider
from .pool import ProviderPool
from .replicas import ReplicatedProvider

__all__ = [
    "AnthropicProvider",
    "Backoff",
    "CallRequest",
    "Completion",
    "OpenAIProvider",
    "Provider",
    "ProviderPool",
    "ReplicatedProvider",
]
