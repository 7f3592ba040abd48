"""The requests a `.moa` topology sends equal those of the paper's message construction
(togethercomputer/MoA), as re-implemented here.

This is NOT the reference's code, vendored or imported: it is our re-implementation of its
documented behaviour, written from reading it, so a misreading of the reference would be repeated
on both sides and pass. What it re-implements: `advanced-moa.py` (4 proposers, 3 layers: every
layer-2 model and the final aggregator get `system = PROMPT + "\\n" + "\\n".join(f"{i+1}. {r}" ...)` in front of the user message) and
`utils.py: inject_references_to_messages` (the bot's multi-turn path: the block is appended with
"\\n\\n" to a leading system message, else put in front). Answers come back stripped in the reference
(`generate_together` does `output.strip()`), as refs are stripped here.

Both sides get their answers from the same deterministic responder; the test compares the JSON
serialisation of every request's messages, byte for byte, and the rest of the body.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json

from moa_dsl import loads
from moa_dsl.runtime.scheduler import arun
from moa_dsl.testing import FakeLLMServer

REFERENCE_MODELS = [
    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "Qwen/Qwen2.5-72B-Instruct-Turbo",
    "Qwen/Qwen2.5-Coder-32B-Instruct",
    "deepseek-ai/DeepSeek-V3",
]
AGGREGATOR_MODEL = "deepseek-ai/DeepSeek-V3"
USER_PROMPT = "What are 3 fun things to do in SF?"

# advanced-moa.py's aggreagator_system_prompt, as written there.
REF_SYSTEM = """You have been provided with a set of responses from various open-source models to the latest user query. Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. Your response should not simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the highest standards of accuracy and reliability.

Responses from models:"""


def responder(model: str, body: dict) -> str:
    """Deterministic per model and request, with whitespace around it that both sides must strip."""
    digest = hashlib.sha256(json.dumps([model, body["messages"]]).encode()).hexdigest()[:12]
    return f"\n  {model.split('/')[-1]} says {digest}  \n"


# --- the reference's behaviour, re-implemented (not its code) ---------------------------------------------------------------

def ref_final_system_prompt(system_prompt: str, results: list[str]) -> str:  # getFinalSystemPrompt
    return system_prompt + "\n" + "\n".join([f"{i+1}. {str(element)}" for i, element in enumerate(results)])


def ref_call(sent: list[dict], model: str, messages: list[dict], **extra) -> str:
    body = {"model": model, "messages": messages, **extra}
    sent.append(body)
    return responder(model, body).strip()  # utils.generate_together: output.strip()


def reference_advanced_moa(layers: int = 3) -> list[dict]:
    sent: list[dict] = []

    def run_llm(model, prev_response=None):
        messages = ([{"role": "system", "content": ref_final_system_prompt(REF_SYSTEM, prev_response)},
                     {"role": "user", "content": USER_PROMPT}]
                    if prev_response else [{"role": "user", "content": USER_PROMPT}])
        return ref_call(sent, model, messages, temperature=0.7, max_tokens=512)

    results = [run_llm(m) for m in REFERENCE_MODELS]
    for _ in range(1, layers - 1):
        results = [run_llm(m, prev_response=results) for m in REFERENCE_MODELS]
    ref_call(sent, AGGREGATOR_MODEL, [{"role": "system", "content": ref_final_system_prompt(REF_SYSTEM, results)},
                                      {"role": "user", "content": USER_PROMPT}], stream=True)
    return sent


def ref_inject_references_to_messages(messages, references):  # utils.py
    messages = copy.deepcopy(messages)
    system = REF_SYSTEM
    for i, reference in enumerate(references):
        system += f"\n{i+1}. {reference}"
    if messages[0]["role"] == "system":
        messages[0]["content"] += "\n\n" + system
    else:
        messages = [{"role": "system", "content": system}] + messages
    return messages


# --- ours ------------------------------------------------------------------------------------------

def _source(url: str) -> str:
    members = ", ".join(f'together:"{m}"' for m in REFERENCE_MODELS)
    return f"""
provider together = openai {{ base_url = "{url}", api_key = env("TOGETHER_API_KEY") }}
defaults {{ temperature = 0.7, max_tokens = 512 }}
layer first  = propose   [{members}]
layer second = aggregate [{members}] <- first
node  final  = aggregate together:"{AGGREGATOR_MODEL}" <- second
output final
"""


def _run(server: FakeLLMServer, query, source: str | None = None):
    pipe = loads(source or _source(server.url))
    return asyncio.run(arun(pipe, query, cache=False, environ={"TOGETHER_API_KEY": "sk-test-not-real"}))


def _canon(messages) -> str:
    return json.dumps(messages, ensure_ascii=False)


def test_advanced_moa_three_layers_sends_the_reference_requests():
    with FakeLLMServer(responder=responder) as server:
        result = _run(server, USER_PROMPT)
        ours = [r.body for r in server.requests]
    assert result.status == "ok"
    expected = reference_advanced_moa()
    assert len(ours) == len(expected) == 9
    final_ours = [b for b in ours if b.get("stream")]
    final_ref = [b for b in expected if b.get("stream")]
    assert len(final_ours) == len(final_ref) == 1
    # The final call: same model, same messages byte for byte, streamed.
    assert final_ours[0]["model"] == final_ref[0]["model"]
    assert _canon(final_ours[0]["messages"]) == _canon(final_ref[0]["messages"])
    # The reference's final call leaves temperature/max_tokens to the API's defaults; ours sends the
    # topology's (docs/language.md: "the request carries temperature, max_tokens"), which is the point of
    # writing `defaults` in the file.
    assert final_ours[0]["temperature"] == 0.7 and final_ours[0]["max_tokens"] == 512
    # Every other call: the whole body (model, messages, temperature, max_tokens), byte for byte.
    rest = sorted(_canon(b) for b in ours if not b.get("stream"))
    assert rest == sorted(_canon(b) for b in expected if not b.get("stream"))


def test_multi_turn_conversation_matches_inject_references_to_messages():
    conversation = [{"role": "system", "content": "You are a helpful travel guide."},
                    {"role": "user", "content": "Name a city."}, {"role": "assistant", "content": "Paris."},
                    {"role": "user", "content": USER_PROMPT}]
    with FakeLLMServer(responder=responder) as server:
        url = server.url
        src = f"""
provider together = openai {{ base_url = "{url}", api_key = env("TOGETHER_API_KEY") }}
layer first = propose [together:"a/one", together:"b/two"]
node final = aggregate together:"c/three" <- first
"""
        _run(server, conversation, src)
        bodies = {r.body["model"]: r.body for r in server.requests}
    refs = [responder(m, {"messages": conversation}).strip() for m in ("a/one", "b/two")]
    assert bodies["a/one"]["messages"] == conversation  # proposers send the conversation as it is
    assert _canon(bodies["c/three"]["messages"]) == _canon(ref_inject_references_to_messages(conversation, refs))
