"""The judge: MT-Bench's pairwise prompt, its verdicts, how a pair of verdicts scores, and the judge's model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import networkx as nx

from ..config import builtin_providers
from ..errors import ConfigError, Span
from ..runtime import (
    Pipeline,
)

__all__ = [
    "DEFAULT_JUDGE",
    "DEFAULT_JUDGE_MAX_TOKENS",
    "judge_pipeline",
    "judge_prompt",
    "JUDGE_SYSTEM",
    "JUDGE_USER",
    "JudgeModel",
    "judgment_score",
    "pair_score",
    "parse_judge",
    "parse_verdict",
    "unjudged_score",
]

DEFAULT_JUDGE = 'openai:"gpt-4o"'
DEFAULT_JUDGE_MAX_TOKENS = 512

# --- the judge (modelled on MT-Bench's "pair-v2" prompt) -----------------------------------------

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better, considering the helpfulness, relevance, "
    "accuracy, depth, creativity and level of detail of the responses. Begin by comparing the two "
    "responses and give a short explanation. Avoid any position bias: the order in which the "
    "responses are presented must not influence your decision. Do not let the length of the "
    "responses or the names of the assistants influence you. Be as objective as possible. After your "
    'explanation, output your final verdict strictly in this format: "[[A]]" if assistant A is '
    'better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
JUDGE_USER = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return JUDGE_USER.format(question=question, answer_a=answer_a, answer_b=answer_b)


def parse_verdict(text: str | None) -> str | None:
    """The last `[[A]]`/`[[B]]`/`[[C]]` in the text (judges often quote the format first), or None."""
    found = _VERDICT.findall(text or "")
    return found[-1].upper() if found else None


def judgment_score(verdict: str | None, *, candidate_first: bool) -> float:
    """The candidate's score from one verdict: 1 win, 0 loss, 0.5 tie or unparseable."""
    if verdict == "A":
        return 1.0 if candidate_first else 0.0
    if verdict == "B":
        return 0.0 if candidate_first else 1.0
    return 0.5


def pair_score(baseline_first: float, candidate_first: float) -> float:
    """Both orders agree: that score; a split verdict: 0.5."""
    return baseline_first if baseline_first == candidate_first else 0.5


def unjudged_score(*, candidate_ok: bool, baseline_ok: bool) -> float:
    """An item where a run failed has nothing to judge: a failed answer loses to a real one, two tie."""
    if candidate_ok == baseline_ok:
        return 0.5
    return 1.0 if candidate_ok else 0.0


# --- the judge's model --------------------------------------------------------------------------

_MODEL_REF = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*"((?:[^"\\]|\\.)*)"\s*$')
_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


@dataclass(frozen=True)
class JudgeModel:
    ref: str  # as the user wrote it, for the report
    provider: str
    model: str
    price: tuple[float, float] | None = None


def parse_judge(ref: str, pipes: Sequence[Pipeline]) -> tuple[JudgeModel, Any]:
    """`PROVIDER:"ID"` or a model NAME declared in one of the topologies -> (JudgeModel, ProviderConfig).

    The provider is a built-in one or one declared in the topology files (the first file that
    declares it wins). Raises ConfigError with what would have been accepted.
    """
    declared: dict[str, Any] = {}
    for pipe in pipes:
        for name, cfg in pipe.graph.graph.get("providers", {}).items():
            declared.setdefault(name, cfg)
    providers = {**builtin_providers(), **declared}
    m = _MODEL_REF.match(ref)
    if m:
        provider = m.group(1)
        try:
            model = json.loads(f'"{m.group(2)}"')
        except json.JSONDecodeError as exc:  # a bad escape such as \q
            raise ConfigError(f"--judge {ref}: the model id is not a valid string ({exc.msg})") from None
        if not model:
            raise ConfigError(f"--judge {ref}: the model id is empty")
        if provider not in providers:
            raise ConfigError(f"--judge {ref}: unknown provider '{provider}'; known: {', '.join(sorted(providers))}")
        return JudgeModel(ref.strip(), provider, model, _declared_price(pipes, provider, model)), providers[provider]
    m = _NAME.match(ref)
    if m:
        for pipe in pipes:
            for _, attrs in pipe.graph.nodes(data=True):
                if attrs.get("model_name") == m.group(1):
                    price = attrs["params"].get("price")
                    judge = JudgeModel(ref.strip(), attrs["provider"], attrs["model"], tuple(price) if price else None)
                    return judge, pipe.graph.graph["providers"][attrs["provider"]]
        raise ConfigError(
            f"--judge {ref}: no model named '{m.group(1)}' in the topologies; "
            'write PROVIDER:"MODEL-ID", e.g. openai:"gpt-4o" or local:"qwen2.5-coder-1.5b"'
        )
    raise ConfigError(f'--judge {ref!r}: expected PROVIDER:"MODEL-ID" (e.g. openai:"gpt-4o") or a declared model name')


def _declared_price(pipes: Sequence[Pipeline], provider: str, model: str) -> tuple[float, float] | None:
    """A price the topologies give the same provider+model, so the judge's cost can be reported."""
    for pipe in pipes:
        for _, attrs in pipe.graph.nodes(data=True):
            if attrs["provider"] == provider and attrs["model"] == model and attrs["params"].get("price"):
                return tuple(attrs["params"]["price"])
    return None


def judge_pipeline(judge: JudgeModel, provider_cfg: Any, *, max_tokens: int) -> Pipeline:
    """A one-node graph (the attributes of docs/architecture.md) so judge calls take the runner's path:
    same providers, cache, global bound and events. Temperature 0: a verdict should be reproducible."""
    graph = nx.DiGraph(output="judge", providers={judge.provider: provider_cfg}, dead=frozenset())
    params = {
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "cache": True,
        "timeout": provider_cfg.timeout,
        "retries": provider_cfg.retries,
        "system": JUDGE_SYSTEM,
    }
    graph.add_node(
        "judge",
        role="propose",
        provider=judge.provider,
        model=judge.model,
        model_name=None,
        sample=None,
        layer=None,
        inputs=(),
        params=params,
        span=Span("<judge>", 1, 1, 1, 1),
    )
    return Pipeline(graph=graph, name="judge")
