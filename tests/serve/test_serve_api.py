"""`moa serve` through the official `openai` SDK: one real server subprocess for the module, its
topologies calling FakeLLMServers on loopback (the request logs are what the assertions read)."""
from __future__ import annotations

import asyncio
import json
import socket
import uuid

import httpx
import openai
import pytest
from serve_helpers import ServeProcess, poll

from moa_dsl.testing import FakeLLMServer, default_answer

KEY = "serve-test-key-0123456789"
PROVIDER_KEY = "sk-provider-SECRET-abcdef123456"   # must never reach a client or the log
ENV = {"MOA_SERVE_KEY": KEY, "FAKE_PROVIDER_KEY": PROVIDER_KEY}
CONCURRENCY = 4
LONG = " ".join(f"w{i}" for i in range(80)) + "."


@pytest.fixture(scope="module")
def fake():
    with FakeLLMServer(default_latency=0.01, latency={"model-slowp": 2.0}) as server:
        yield server


@pytest.fixture(scope="module")
def slowfake():
    """A second provider whose streams are slow: 80 tokens, 40 ms apart."""
    with FakeLLMServer(token_delay=0.04, responder={"model-long": lambda m, b: LONG}) as server:
        yield server


def _topologies(root, fake_url: str, slow_url: str):
    fake = f'provider fake = openai {{ base_url = "{fake_url}", api_key = env("FAKE_PROVIDER_KEY") }}\n'
    slow = f'provider slowfake = openai {{ base_url = "{slow_url}", api_key = env("FAKE_PROVIDER_KEY") }}\n'
    files = {
        "lite": fake + 'node a = propose fake:"model-a"\nnode b = propose fake:"model-b"\n'
                       'node agg = aggregate fake:"model-agg" <- a, b\n',
        "solo": fake + 'node only = propose fake:"model-solo"\n',
        "failing": fake + 'node p = propose fake:"model-p2"\n'
                          'node out = aggregate fake:"model-fail" <- p { retries = 0 }\n',
        "slowprop": fake + 'node p = propose fake:"model-slowp"\nnode out = aggregate fake:"model-after" <- p\n',
        "slowstream": slow + 'node p = propose slowfake:"model-quick"\n'
                             'node out = aggregate slowfake:"model-long" <- p\n',
    }
    for name, text in files.items():
        (root / f"{name}.moa").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake, slowfake):
    root = _topologies(tmp_path_factory.mktemp("topologies"), fake.url, slowfake.url)
    cache = tmp_path_factory.mktemp("cache")
    proc = ServeProcess([str(root), "--api-key-env", "MOA_SERVE_KEY", "--concurrency", str(CONCURRENCY),
                         "--cache-dir", str(cache)], env=ENV)
    yield proc
    proc.close()
    assert PROVIDER_KEY not in proc.stderr and KEY not in proc.stderr


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


def _q(text: str = "Why is the sky blue?") -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def _requests_for(fake: FakeLLMServer, query: str):
    return [r for r in fake.requests if r.body and query in json.dumps(r.body)]


def _fake_usage(r) -> tuple[int, int]:
    """What FakeLLMServer reported for one request: words in, words out."""
    msgs = r.body["messages"]
    answer = default_answer(r.model, msgs, r.body.get("seed"))
    prompt = sum(len(m["content"].split()) for m in msgs)
    return prompt, min(len(answer.split()), r.body.get("max_tokens") or 10**9)


def _ask(client, query, model="lite", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": query}], **kw)


def test_models_lists_every_topology_by_file_stem(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["failing", "lite", "slowprop", "slowstream", "solo"]
    assert client.models.retrieve("lite").id == "lite"


def test_a_completion_is_the_output_nodes_answer_and_usage_sums_the_fan_out(client, fake):
    q = _q()
    done = _ask(client, q)
    sent = _requests_for(fake, q)
    assert sorted(r.model for r in sent) == ["model-a", "model-agg", "model-b"]
    agg = next(r for r in sent if r.model == "model-agg")
    assert done.choices[0].message.content == default_answer("model-agg", agg.body["messages"], None)
    assert done.choices[0].finish_reason == "stop" and done.model == "lite"
    prompt = sum(_fake_usage(r)[0] for r in sent)
    completion = sum(_fake_usage(r)[1] for r in sent)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (prompt, completion)
    assert done.usage.total_tokens == prompt + completion
    moa = done.moa
    assert moa["calls"] == 3 and moa["cache_hits"] == 0
    assert set(moa["nodes"]) == {"a", "b", "agg"}
    assert all(n["status"] == "ok" for n in moa["nodes"].values())
    assert moa["nodes"]["agg"]["model"] == "model-agg"
    assert sum(n["usage"]["prompt_tokens"] for n in moa["nodes"].values()) == prompt


def test_a_stream_gives_the_same_text_as_the_completion(client, fake):
    q = _q()
    stream = _ask(client, q, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    sent = _requests_for(fake, q)
    assert len(sent) == 3
    assert chunks[-1].usage.completion_tokens == sum(_fake_usage(r)[1] for r in sent)
    again = _ask(client, q)                         # the same request, not streamed: from the cache
    assert again.choices[0].message.content == text
    agg = next(r for r in sent if r.model == "model-agg")
    assert text == default_answer("model-agg", agg.body["messages"], None)
    # without include_usage there is no usage chunk
    plain = list(_ask(client, _q(), stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_request_parameters_reach_only_the_output_node(client, fake):
    q = _q()
    _ask(client, q, temperature=0.25, top_p=0.5, max_tokens=5, seed=42, stop=["zzz"])
    sent = {r.model: r.body for r in _requests_for(fake, q)}
    out = sent["model-agg"]
    assert (out["temperature"], out["top_p"], out["max_tokens"], out["seed"]) == (0.25, 0.5, 5, 42)
    assert out["stop"] == ["zzz"]
    for proposer in ("model-a", "model-b"):
        body = sent[proposer]
        assert body["temperature"] == 0.7 and body["max_tokens"] == 512    # the file's (built-in) values
        assert "seed" not in body and "top_p" not in body and "stop" not in body
    q2 = _q()
    _ask(client, q2, max_completion_tokens=3)
    assert {r.model: r.body for r in _requests_for(fake, q2)}["model-agg"]["max_tokens"] == 3


def test_a_repeated_request_is_served_from_the_cache(client, fake):
    q = _q()
    first = _ask(client, q)
    before = len(fake.requests)
    second = _ask(client, q)
    assert len(fake.requests) == before                      # nothing new reached the provider
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.moa["cache_hits"] == 3 and second.moa["calls"] == 0
    assert second.usage.total_tokens == 0                    # cached answers cost nothing now
    assert {n["status"] for n in second.moa["nodes"].values()} == {"cached"}


def test_a_missing_or_wrong_key_is_401_on_every_route(server):
    for key in ("wrong-key", KEY[:-1], KEY + "x"):
        bad = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            _ask(bad, "hi")
    for path in ("/models", "/chat/completions", "/no/such/route"):
        r = httpx.post(server.url + path, json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        _ask(client, "hi", model="no-such-topology")
    assert "no-such-topology" in str(err.value) and "lite" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-topology")


@pytest.mark.parametrize("body, says", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"model": "lite"}).encode(), "messages"),
    (json.dumps({"model": "lite", "messages": []}).encode(), "messages"),
    (json.dumps({"model": "lite", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(),
     "temperature"),
    (json.dumps({"model": "lite", "messages": [{"role": "assistant", "content": "x"}]}).encode(), "last message"),
])
def test_a_malformed_body_is_400(server, body, says):
    r = httpx.post(server.url + "/chat/completions", content=body,
                   headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert says in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("extra, says", [
    ({"n": 2}, "n must be 1"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_what_a_topology_cannot_do_is_refused_by_name(client, extra, says):
    with pytest.raises(openai.BadRequestError) as err:
        _ask(client, "hi", **extra)
    assert says in str(err.value)


def _raw(url: str, head: str) -> socket.socket:
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        data += part
        if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
            break
    return data


def test_a_body_over_4_mib_is_413_before_it_is_read(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {5 * 1024 * 1024}\r\n\r\n")
    with _raw(server.url, head) as sock:     # declared: refused without sending a byte of the body
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"request_too_large"' in reply


def test_a_chunked_body_over_4_mib_is_413_as_its_bytes_arrive(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    with _raw(server.url, head) as sock:
        sent = 0
        while sent <= 4 * 1024 * 1024:      # a little over the limit, and never the final chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_a_failed_output_is_502_naming_the_node_and_no_key(client, fake, server):
    fake.inject("model-fail", "400", message=f"bad request; your key {PROVIDER_KEY} is not allowed here")
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, _q(), model="failing")
    assert err.value.status_code == 502
    message = err.value.body["message"] if isinstance(err.value.body, dict) else str(err.value.body)
    assert "'out'" in message and "400" in message
    assert PROVIDER_KEY not in json.dumps(err.value.body) and PROVIDER_KEY not in err.value.response.text
    assert poll(lambda: any(" 502 topology=failing" in ln for ln in server.log_lines()))
    assert PROVIDER_KEY not in server.stderr


def test_a_stream_whose_run_fails_before_any_token_is_a_plain_502(client, fake):
    fake.inject("model-fail", "400", message=f"no; key {PROVIDER_KEY}")
    with pytest.raises(openai.APIStatusError) as err:
        list(_ask(client, _q(), model="failing", stream=True))
    assert err.value.status_code == 502 and "'out'" in str(err.value)
    assert PROVIDER_KEY not in err.value.response.text


def test_a_failure_after_the_stream_started_ends_it_with_one_error_event(server, fake):
    fake.inject("model-fail", "truncated_stream", tokens=3)
    r = httpx.post(server.url + "/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "failing", "stream": True, "messages": [{"role": "user", "content": _q()}]})
    assert r.status_code == 200
    events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"} and "'out'" in last["error"]["message"]
    assert sum("error" in json.loads(e) for e in events) == 1
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) != ""


def test_200_concurrent_requests_all_answered_under_one_global_bound(server, fake):
    fake.reset_stats()

    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*(
                aclient.chat.completions.create(model="lite" if i % 2 else "solo",
                                                messages=[{"role": "user", "content": _q(f"q{i}")}])
                for i in range(200)))
        finally:
            await aclient.close()

    answers = asyncio.run(main())
    assert len(answers) == 200 and all(a.choices[0].message.content for a in answers)
    assert len(fake.requests) == 100 * 3 + 100 * 1
    assert fake.max_in_flight == CONCURRENCY          # the bound held across requests and topologies


def test_a_client_that_disconnects_mid_stream_cancels_its_calls_while_others_go_on(server, slowfake):
    q_gone, q_stays = _q("gone"), _q("stays")

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {KEY}"},
                                     timeout=60) as http:
            def body(q, stream):
                return {"model": "slowstream", "stream": stream, "messages": [{"role": "user", "content": q}]}

            stays = asyncio.ensure_future(http.post("/chat/completions", json=body(q_stays, False)))
            async with http.stream("POST", "/chat/completions", json=body(q_gone, True)) as r:
                assert r.status_code == 200
                got = 0
                async for line in r.aiter_lines():
                    got += line.startswith("data: ")
                    if got == 4:           # the role chunk and three tokens: mid-stream
                        break
            return await stays            # leaving the block closed the connection mid-stream

    stays = asyncio.run(main())
    assert stays.status_code == 200 and stays.json()["choices"][0]["message"]["content"] == LONG
    gone = [r for r in slowfake.requests_for("model-long") if q_gone in json.dumps(r.body)]
    assert len(gone) == 1
    # The stream would take 80 x 40 ms; our side closed it, so the fake server's write failed early.
    assert poll(lambda: gone[0].finished is not None, timeout=2.5)
    assert poll(lambda: any("client-disconnected" in ln and "topology=slowstream" in ln
                            for ln in server.log_lines()))


def test_a_client_that_disconnects_before_the_answer_cancels_the_rest_of_its_run(server, fake):
    q_gone, q_stays = _q("gone"), _q("stays")

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {KEY}"},
                                     timeout=60) as http:
            def body(q):
                return {"model": "slowprop", "messages": [{"role": "user", "content": q}]}

            gone = asyncio.ensure_future(http.post("/chat/completions", json=body(q_gone)))
            await asyncio.sleep(0)
            stays = asyncio.ensure_future(http.post("/chat/completions", json=body(q_stays)))
            while not _requests_for(fake, q_gone):      # its proposer's call is out
                await asyncio.sleep(0.02)
            gone.cancel()                                # the client goes away
            return await stays

    stays = asyncio.run(main())
    assert stays.status_code == 200
    assert poll(lambda: any("client-disconnected" in ln and "topology=slowprop" in ln for ln in server.log_lines()))
    # The other request's aggregator ran; the disconnected one's never did (its proposer was cancelled,
    # and the same 2 s proposer latency has passed for both by the time `stays` was answered).
    assert [r.model for r in _requests_for(fake, q_stays)] == ["model-slowp", "model-after"]
    assert [r.model for r in _requests_for(fake, q_gone)] == ["model-slowp"]


def test_every_request_is_one_log_line_without_a_key(server, client):
    before = len(server.log_lines())
    _ask(client, _q())
    assert poll(lambda: len(server.log_lines()) == before + 1)
    line = server.log_lines()[-1]
    assert " 200 topology=lite calls=3 cache_hits=0 tokens=" in line and line.endswith("s")
    assert KEY not in server.stderr and PROVIDER_KEY not in server.stderr


def test_a_request_sharing_a_call_with_one_that_disconnects_still_gets_its_whole_answer(server, fake):
    """Two identical requests at once: the second waits on the first's calls (the scheduler's
    in-flight table). The first client leaves; the second is answered in full. (Today the shared call
    is cancelled with the first request and the second sends it again: see the README.)"""
    q = _q("shared")

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {KEY}"},
                                     timeout=60) as http:
            body = {"model": "slowprop", "messages": [{"role": "user", "content": q}]}
            first = asyncio.ensure_future(http.post("/chat/completions", json=body))
            while not _requests_for(fake, q):
                await asyncio.sleep(0.02)
            second = asyncio.ensure_future(http.post("/chat/completions", json=body))
            await asyncio.sleep(0.2)
            first.cancel()
            return await second

    second = asyncio.run(main())
    assert second.status_code == 200
    sent = _requests_for(fake, q)
    after = next(r for r in sent if r.model == "model-after")
    assert second.json()["choices"][0]["message"]["content"] == default_answer("model-after", after.body["messages"])
    assert [r.model for r in sent].count("model-after") == 1
