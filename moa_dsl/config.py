"""Constants and configuration values shared by the compiler, the runner and the providers.

Environment variables are read here and nowhere else (except `env("X")` values, which the
provider pool resolves when a run starts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "BASE_URL_FALLBACKS",
    "BUILTIN_PARAMS",
    "builtin_providers",
    "cache_dir",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "LOCAL_TIMEOUT_S",
    "EnvRef",
    "MODEL_PARAMS",
    "models_dir",
    "PARAM_KEYS",
    "PROVIDER_KINDS",
    "PROVIDER_OPTIONS",
    "ProviderConfig",
    "RANK_PROMPT",
    "REFERENCE_PROMPT",
    "REQUEST_PARAMS",
    "request_params",
    "ROLE_PARAMS",
    "ROLES",
]

DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT_S = 120.0
# The embedded runtime's default: a CPU serves several parallel requests to one small model, and the
# timeout bounds a request from its start to its last byte; a sweep on 2 busy cores saw 120 s run out.
LOCAL_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a response body past it fails the call (README, "Limits on input")

# The synthesis instruction of togethercomputer/MoA, verbatim (docs/language.md, "The messages a call sends").
REFERENCE_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the latest "
    "user query. Your task is to synthesize these responses into a single, high-quality response. "
    "It is crucial to critically evaluate the information provided in these responses, recognizing "
    "that some of it may be biased or incorrect. Your response should not simply replicate the given "
    "answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure "
    "your response is well-structured, coherent, and adheres to the highest standards of accuracy and "
    "reliability.\n\nResponses from models:"
)

# The ranking instruction of a `rank` node (docs/language.md, "rank"); its candidates follow, one per
# line as `[i] answer`. The runtime reads the reply as the sequence of `[i]` in it, so the format
# asked for here is the one thing that must not drift.
RANK_PROMPT = (
    "You have been provided with a set of candidate responses to the latest user query, each marked "
    "with its number in brackets. Your task is to rank them from best to worst: judge each one on "
    "accuracy, completeness and helpfulness as an answer to that query, keeping in mind that some of "
    "them may be biased or incorrect. Reply with the candidates' numbers only, in brackets, from best "
    'to worst, separated by " > ", for example: [2] > [1] > [3]. Name every candidate exactly once '
    "and write nothing else.\n\nCandidates:"
)

PROVIDER_KINDS = ("openai", "anthropic", "local")
PROVIDER_OPTIONS = ("base_url", "api_key", "headers", "max_concurrency", "timeout", "retries", "max_response_bytes")

# Parameters that reach the HTTP request body (when set). The rest steer the runner.
REQUEST_PARAMS = ("temperature", "top_p", "max_tokens", "seed", "stop")
BUILTIN_PARAMS: Mapping[str, Any] = {
    "temperature": 0.7,
    "max_tokens": 512,
    "min_inputs": 1,
    "cache": True,
    "top_k": 1,
    "normalize": True,
}
PARAM_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "system",
    "prompt",
    "min_inputs",
    "timeout",
    "retries",
    "cache",
    "price",
    "top_k",
    "quorum",
    "agree",
    "window",
    "extract",
    "normalize",
)

# Which parameters each role takes (docs/language.md, "Beyond propose and aggregate"). A key written on
# a node or layer of a role that does not take it is E205; from `defaults` or a model it simply
# does not apply to that node. MODEL_PARAMS steer the one model call a node makes; a `vote`
# calls none.
MODEL_PARAMS = ("temperature", "top_p", "max_tokens", "seed", "stop", "system", "timeout", "retries", "cache", "price")
ROLE_PARAMS: Mapping[str, tuple[str, ...]] = {
    "propose": MODEL_PARAMS,
    "aggregate": MODEL_PARAMS + ("prompt", "min_inputs", "quorum", "agree", "window", "extract", "normalize"),
    "rank": MODEL_PARAMS + ("prompt", "min_inputs", "top_k", "quorum"),
    "vote": ("min_inputs", "extract", "normalize"),
}
ROLES = tuple(ROLE_PARAMS)


@dataclass(frozen=True)
class EnvRef:
    """`env("NAME")` in source: resolved when a run starts, never at parse time."""

    name: str

    def resolve(self, environ: Mapping[str, str] | None = None) -> str | None:
        return (os.environ if environ is None else environ).get(self.name)


@dataclass(frozen=True, repr=False)
class ProviderConfig:
    """A provider as declared (or built in). `api_key` is a literal, an EnvRef, or None.
    Its repr stars a literal api_key and literal header values (an EnvRef is a name: shown)."""

    name: str
    kind: str  # "openai" | "anthropic" | "local"
    base_url: str | EnvRef | tuple[str, ...] | None = None  # None for local; a tuple: replicas, in order
    api_key: str | EnvRef | None = None
    headers: Mapping[str, str | EnvRef] = field(default_factory=dict)
    max_concurrency: int | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __repr__(self) -> str:
        def shown(name: str, value: Any) -> str:
            if name == "api_key" and isinstance(value, str):
                return "'***'"
            if name == "headers":
                return (
                    "{"
                    + ", ".join(f"{k!r}: " + ("'***'" if isinstance(v, str) else repr(v)) for k, v in value.items())
                    + "}"
                )
            return repr(value)

        parts = ", ".join(f"{f.name}={shown(f.name, getattr(self, f.name))}" for f in fields(self))
        return f"ProviderConfig({parts})"


def _openai_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"


def builtin_providers() -> dict[str, ProviderConfig]:
    """The providers that need no `provider` statement (docs/language.md, "Built-in providers")."""
    return {
        "openai": ProviderConfig("openai", "openai", EnvRef("OPENAI_BASE_URL"), EnvRef("OPENAI_API_KEY")),
        "together": ProviderConfig("together", "openai", "https://api.together.xyz/v1", EnvRef("TOGETHER_API_KEY")),
        "groq": ProviderConfig("groq", "openai", "https://api.groq.com/openai/v1", EnvRef("GROQ_API_KEY")),
        "openrouter": ProviderConfig(
            "openrouter", "openai", "https://openrouter.ai/api/v1", EnvRef("OPENROUTER_API_KEY")
        ),
        "ollama": ProviderConfig("ollama", "openai", "http://localhost:11434/v1", None),
        "anthropic": ProviderConfig(
            "anthropic", "anthropic", "https://api.anthropic.com/v1", EnvRef("ANTHROPIC_API_KEY")
        ),
        "local": ProviderConfig("local", "local", None, None, timeout=LOCAL_TIMEOUT_S),
    }


# Where a built-in provider's base_url EnvRef is unset, this is used instead.
BASE_URL_FALLBACKS = {"OPENAI_BASE_URL": "https://api.openai.com/v1"}


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--cache-dir, else $MOA_CACHE_DIR, else ~/.cache/moa-dsl."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MOA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moa-dsl"


def models_dir() -> Path:
    """$MOA_MODELS_DIR, else ~/.cache/moa-dsl/models."""
    env = os.environ.get("MOA_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moa-dsl" / "models"


def request_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that reach the request body, only those that are set."""
    return {k: params[k] for k in REQUEST_PARAMS if params.get(k) is not None}
