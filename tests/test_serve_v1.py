"""``h2q-tui serve``'s OpenAI-compatible routes: the official ``openai`` client unchanged
against a live server (models, chat and completions streaming and not, seeds, ``n``, JSON
schemas, logprobs, embeddings, its NotFoundError/BadRequestError), raw HTTP for the
server-sent events' bytes, and every bad input answered with OpenAI's error object while the
server keeps serving."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from ollama_helpers import LiveServer, hooked, make_run, serving, wait_for

from h2q_tui.generation.generate import Generation
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.ollama import api, protocol, registry_file, v1_shapes
from h2q_tui.ollama.models import Registry
from h2q_tui.ollama.server import ServeConfig, Server

USER = [{"role": "user", "content": "Hello"}]
SEEDED = {"max_tokens": 8, "seed": 5, "temperature": 0.9}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("v1"), "tiny")


@pytest.fixture(scope="module")
def served(run):
    with serving(run) as pair:
        yield pair


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[1]}/v1", api_key="unused", max_retries=0)


# ----------------------------------------------------------------------------- the official client
def test_models_list_and_retrieve(client) -> None:
    assert [m.id for m in client.models.list()] == ["tiny:latest"]
    model = client.models.retrieve("tiny:latest")
    assert model.id == "tiny:latest" and model.object == "model" and model.created > 0
    assert client.models.retrieve("tiny").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_streaming_and_not_seeded(client) -> None:
    whole = client.chat.completions.create(model="tiny", messages=USER, **SEEDED)
    again = client.chat.completions.create(model="tiny", messages=USER, **SEEDED)
    text = whole.choices[0].message.content
    assert text and text == again.choices[0].message.content  # seeded: the same text
    assert (
        whole.choices[0].finish_reason == "length" and whole.choices[0].message.role == "assistant"
    )
    assert whole.usage.completion_tokens == 8
    assert whole.usage.prompt_tokens == len(protocol.render_chat(USER).encode())
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 8
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            **SEEDED,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1
    other = client.chat.completions.create(model="tiny", messages=USER, **{**SEEDED, "seed": 6})
    assert other.choices[0].message.content != text
    # developer is system; a list of text parts is their texts joined by newlines
    parts = [
        {"role": "developer", "content": "Be kind"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
        },
    ]
    plain = [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Hel\nlo"}]
    a = client.chat.completions.create(model="tiny", messages=parts, **SEEDED)
    b = client.chat.completions.create(model="tiny", messages=plain, **SEEDED)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == len(protocol.render_chat(plain).encode())


def test_n_choices_have_seeds_seed_plus_index(client) -> None:
    both = client.completions.create(model="tiny", prompt="Once", n=2, **SEEDED)
    assert [c.index for c in both.choices] == [0, 1]
    for index, choice in enumerate(both.choices):
        alone = client.completions.create(
            model="tiny", prompt="Once", **{**SEEDED, "seed": 5 + index}
        )
        assert choice.text == alone.choices[0].text
    assert both.usage.completion_tokens == 16 and both.usage.prompt_tokens == 4
    streamed = client.chat.completions.create(
        model="tiny", messages=USER, n=2, stream=True, **SEEDED
    )
    texts = ["", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    whole = client.chat.completions.create(model="tiny", messages=USER, n=2, **SEEDED)
    assert texts == [c.message.content for c in whole.choices] and texts[0] != texts[1]


def test_completions_echo_stop_and_the_native_route_agree(served, client) -> None:
    whole = client.completions.create(model="tiny", prompt="Once", **SEEDED)
    text = whole.choices[0].text
    native = httpx.post(
        f"{served[1]}/api/generate",
        json={
            "model": "tiny",
            "prompt": "Once",
            "stream": False,
            "options": {"num_predict": 8, "seed": 5, "temperature": 0.9, "top_p": 1.0},
        },
        timeout=30,
    ).json()
    assert native["response"] == text  # one generation behind both APIs
    echoed = client.completions.create(model="tiny", prompt="Once", echo=True, **SEEDED)
    assert echoed.choices[0].text == "Once" + text
    stop = text[3:5]
    cut = client.completions.create(model="tiny", prompt="Once", stop=[stop], **SEEDED)
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.find(stop)]


def test_json_schema_output_validates(client) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    for seed in (1, 2):
        reply = client.chat.completions.create(
            model="tiny", messages=USER, response_format=fmt, max_tokens=300, seed=seed
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_logprobs_are_the_generation_s_own(served, client) -> None:
    server, _ = served
    settings = {"max_tokens": 6, "seed": 11, "temperature": 0.8}
    reply = client.completions.create(model="tiny", prompt="Once", logprobs=3, **settings)
    entry = server.registry.get("tiny:latest")
    sampling = SamplingConfig(temperature=0.8, top_p=1.0, max_new_tokens=6, seed=11)
    reference = Generation(entry.model, entry.codec, "Once", sampling=sampling, logprobs=3)
    text = "".join(reference)
    legacy = reply.choices[0].logprobs
    assert reply.choices[0].text == text and len(legacy.token_logprobs) == 6
    for got, record in zip(legacy.token_logprobs, reference.token_logprobs, strict=True):
        assert math.isclose(got, record.logprob, abs_tol=1e-6)
    for top, record in zip(legacy.top_logprobs, reference.token_logprobs, strict=True):
        assert list(top.values()) == pytest.approx([lp for _, lp in record.top], abs=1e-6)
        assert list(top.values()) == sorted(top.values(), reverse=True)
    assert legacy.text_offset[0] == 0 and legacy.text_offset == sorted(legacy.text_offset)
    # chat: items with bytes, the likeliest first; streamed pieces carry the same items
    chat = client.chat.completions.create(
        model="tiny", messages=USER, logprobs=True, top_logprobs=4, **settings
    )
    items = chat.choices[0].logprobs.content
    assert len(items) == chat.usage.completion_tokens == 6
    for item in items:
        values = [top.logprob for top in item.top_logprobs]
        assert len(values) == 4 and values == sorted(values, reverse=True)
        assert item.logprob <= values[0] + 1e-6 and len(item.bytes) == 1
    streamed = client.chat.completions.create(
        model="tiny", messages=USER, logprobs=True, top_logprobs=4, stream=True, **settings
    )
    pieces = [
        i
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for i in c.choices[0].logprobs.content
    ]
    assert [(i.bytes, i.logprob) for i in pieces] == [(i.bytes, i.logprob) for i in items]


def test_embeddings_equal_the_native_route(served, client) -> None:
    texts = ["a cat", "a dog"]
    native = httpx.post(
        f"{served[1]}/api/embed", json={"model": "tiny", "input": texts}, timeout=30
    ).json()["embeddings"]
    default = client.embeddings.create(model="tiny", input=texts)  # base64 float32 on the wire
    floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    assert [d.embedding for d in floats.data] == native
    for got, want in zip(default.data, native, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-6)
    assert default.usage.prompt_tokens == len(b"a cat" + b"a dog")
    cut = client.embeddings.create(
        model="tiny", input="a cat", dimensions=16, encoding_format="float"
    )
    assert len(cut.data[0].embedding) == 16


def test_client_errors(client) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=USER)
    assert missing.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=-5)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
        client.chat.completions.create(model="tiny", messages=USER, tools=[tool])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_a_failure_mid_stream_is_an_error_event(served, client) -> None:
    server, url = served
    client.completions.create(model="tiny", prompt="x", max_tokens=1)  # loaded
    with hooked(server.registry.get("tiny:latest").model, fail_after=4):
        with pytest.raises(openai.APIError, match="boom"):
            for _ in client.chat.completions.create(
                model="tiny", messages=USER, stream=True, max_tokens=50
            ):
                pass
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].text


def test_a_client_that_disconnects_stops_its_choices(served, client) -> None:
    server, url = served
    client.completions.create(model="tiny", prompt="x", max_tokens=1)  # loaded
    payload = {"model": "tiny", "prompt": "Once", "stream": True, "n": 3, "max_tokens": 4000}
    ended = len(server.ended)
    with hooked(server.registry.get("tiny:latest").model, delay_s=0.005) as calls:
        with httpx.stream("POST", f"{url}/v1/completions", json=payload, timeout=30) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
            (job,) = server.jobs
        wait_for(lambda: not job.thread.is_alive(), "the worker to end", timeout=5)
        wait_for(lambda: not server.jobs, "no generation left", timeout=5)
    assert calls["n"] < 1000  # it stopped long before 4000 tokens, and no other choice began
    assert list(server.ended)[ended:] == [(job.thread.name, "cancelled")]
    assert server.registry.get("tiny:latest").gate.count == 0  # the model is free again


def test_a_created_name_s_defaults_come_before_openai_s(run) -> None:
    registry = Registry.discover([run])
    registry_file.attach(registry, registry_file.Roots.of([run], ()), None)
    with LiveServer(Server(registry).app) as live:
        made = httpx.post(
            f"{live.url}/api/create",
            json={
                "model": "kind",
                "from": "tiny",
                "system": "Be kind.",
                "parameters": {"num_predict": 3, "temperature": 0},
            },
            timeout=30,
        )
        assert made.status_code == 200, made.text
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        assert "kind:latest" in [m.id for m in client.models.list()]
        a, b = (
            client.chat.completions.create(model="kind", messages=USER, seed=seed)
            for seed in (1, 2)
        )
        assert a.usage.completion_tokens == 3  # the model's num_predict
        assert a.choices[0].message.content == b.choices[0].message.content  # its temperature 0
        assert a.usage.prompt_tokens == len("Be kind.\n\nUser: Hello\nAssistant:")
        own = client.chat.completions.create(model="kind", messages=USER, max_tokens=5)
        assert own.usage.completion_tokens == 5  # the request's field wins


# ----------------------------------------------------------------------------- the wire
def _events(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n")
    events = body.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    return [e[len(b"data: ") :] for e in events]


def test_server_sent_events_bytes(served) -> None:
    server, url = served
    before = server.direct_streams
    payload = {"model": "tiny", "messages": USER, "stream": True, **SEEDED}
    payload["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=30) as response:
        assert response.headers["content-type"].startswith(api.SSE)
        body = response.read()
    events = _events(body)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert server.direct_streams == before + 1  # the generation thread wrote the pieces
    plain = httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny", "prompt": "Once", "stream": True, **SEEDED},
        timeout=30,
    )
    chunks = [json.loads(e) for e in _events(plain.content)[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_server_sent_events_through_the_loop(asgi) -> None:
    transport = httpx.ASGITransport(app=asgi)
    payload = {"model": "tiny", "prompt": "Once", "stream": True, **SEEDED}
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        streamed = await http.post("/v1/completions", json=payload)
        whole = await http.post("/v1/completions", json={**payload, "stream": False})
    events = _events(streamed.content)
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert events[-1] == b"[DONE]" and text == whole.json()["choices"][0]["text"]


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def asgi(run):
    """The app in process (httpx.ASGITransport; no sockets)."""
    return Server(Registry.discover([run]), ServeConfig()).app


CHAT, COMP, EMB = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
SCHEMA = {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}
REF = {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}  # valid, yet not compilable


def _chat(**fields) -> dict:
    return {"model": "tiny", "messages": USER, **fields}


def _comp(**fields) -> dict:
    return {"model": "tiny", "prompt": "x", **fields}


BAD = [  # method, path, body, status, words, param
    ("POST", CHAT, b"{bad", 400, "invalid JSON", None),
    ("POST", COMP, b"{bad", 400, "invalid JSON", None),
    ("POST", EMB, b"{bad", 400, "invalid JSON", None),
    ("POST", CHAT, b"[1]", 400, "JSON object", None),
    ("POST", CHAT, {"messages": USER}, 400, "model is required", None),
    ("POST", CHAT, _chat(model="nope"), 404, "model 'nope' not found", None),
    ("POST", COMP, _comp(model="nope"), 404, "model 'nope' not found", None),
    ("POST", EMB, {"model": "nope", "input": "x"}, 404, "model 'nope' not found", None),
    ("POST", CHAT, _chat(model="../../etc/passwd"), 400, "invalid model name", None),
    ("POST", CHAT, _chat(messages=[]), 400, "messages must be a non-empty list", "messages"),
    ("POST", CHAT, _chat(messages="hi"), 400, "messages", "messages"),
    ("POST", CHAT, _chat(messages=[{"role": "robot", "content": "x"}]), 400, "role", "messages"),
    ("POST", CHAT, _chat(messages=[{"role": "user", "content": 5}]), 400, "content", "messages"),
    (
        "POST",
        CHAT,
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
        400,
        '"tiny:latest" does not support vision',
        "messages",
    ),
    (
        "POST",
        CHAT,
        _chat(max_tokens=-5),
        400,
        "max_tokens must be a whole number in 0..",
        "max_tokens",
    ),
    ("POST", CHAT, _chat(max_tokens=10**9), 400, "max_tokens", "max_tokens"),
    (
        "POST",
        CHAT,
        _chat(max_completion_tokens=2.5),
        400,
        "max_completion_tokens",
        "max_completion_tokens",
    ),
    ("POST", COMP, _comp(max_tokens=10**9), 400, "max_tokens", "max_tokens"),
    ("POST", CHAT, _chat(max_tokens=4, max_completion_tokens=5), 400, "differ", "max_tokens"),
    ("POST", CHAT, _chat(top_k=-1), 400, "top_k", "top_k"),
    ("POST", CHAT, _chat(repeat_penalty="x"), 400, "repeat_penalty", "repeat_penalty"),
    ("POST", CHAT, _chat(n=1000), 400, "n must be a whole number in 1..8", "n"),
    ("POST", CHAT, _chat(n=0), 400, "n must be", "n"),
    ("POST", CHAT, _chat(stream="yes"), 400, "stream must be true or false", "stream"),
    ("POST", CHAT, _chat(temperature="hot"), 400, "temperature", "temperature"),
    ("POST", CHAT, _chat(temperature=-1), 400, "temperature", "temperature"),
    ("POST", CHAT, _chat(top_p=0), 400, "top_p", "top_p"),
    ("POST", CHAT, _chat(frequency_penalty=3), 400, "must be in -2..2", "frequency_penalty"),
    ("POST", CHAT, _chat(seed="x"), 400, "seed", "seed"),
    ("POST", CHAT, _chat(stop=[1]), 400, "stop must be", "stop"),
    ("POST", CHAT, _chat(response_format=SCHEMA), 400, "invalid JSON schema", "response_format"),
    (
        "POST",
        CHAT,
        _chat(response_format={"type": "json_schema", "json_schema": {"schema": REF}}),
        400,
        "unsupported JSON schema",
        "response_format",
    ),
    (
        "POST",
        CHAT,
        _chat(response_format={"type": "xml"}),
        400,
        "response_format",
        "response_format",
    ),
    (
        "POST",
        CHAT,
        _chat(response_format={"type": "json_schema"}),
        400,
        "schema",
        "response_format",
    ),
    ("POST", CHAT, _chat(top_logprobs=2), 400, "needs logprobs", "top_logprobs"),
    ("POST", CHAT, _chat(logprobs=True, top_logprobs=21), 400, "0..20", "top_logprobs"),
    ("POST", CHAT, _chat(tools=[{"type": "function"}]), 400, "does not support tools", "tools"),
    ("POST", CHAT, _chat(tool_choice="auto"), 400, "does not support tools", "tool_choice"),
    ("POST", CHAT, _chat(logit_bias={"65": 5}), 400, "does not support logit_bias", "logit_bias"),
    (
        "POST",
        CHAT,
        _chat(reasoning_effort="high"),
        400,
        "does not support thinking",
        "reasoning_effort",
    ),
    ("POST", CHAT, _chat(audio={"voice": "x"}), 400, "does not support audio", "audio"),
    ("POST", CHAT, _chat(modalities=["text", "audio"]), 400, "audio", "modalities"),
    ("POST", CHAT, _chat(stream_options=5), 400, "stream_options", "stream_options"),
    ("POST", CHAT, _chat(strength=0.5), 400, "steer word", "strength"),
    ("POST", CHAT, _chat(keep_alive="soon"), 400, "keep_alive", None),
    ("POST", COMP, _comp(prompt=5), 400, "prompt must be a string", "prompt"),
    ("POST", COMP, _comp(prompt=[[1, 2]]), 400, "prompt must be a string", "prompt"),
    ("POST", COMP, _comp(suffix="end"), 400, "does not support insert", "suffix"),
    ("POST", COMP, _comp(logprobs=True), 400, "logprobs must be a whole number", "logprobs"),
    ("POST", COMP, _comp(echo=True, logprobs=1), 400, "echo with logprobs", "echo"),
    ("POST", COMP, _comp(best_of=3), 400, "best_of", "best_of"),
    ("POST", COMP, _comp(prompt="x" * 10_000_000), 413, "limit", None),
    ("POST", EMB, {"model": "tiny", "input": [[1, 2]]}, 400, "input must be", "input"),
    ("POST", EMB, {"model": "tiny", "input": []}, 400, "input must be", "input"),
    ("POST", EMB, {"model": "tiny", "input": ""}, 400, "empty", "input"),
    (
        "POST",
        EMB,
        {"model": "tiny", "input": "x", "encoding_format": "hex"},
        400,
        "float",
        "encoding_format",
    ),
    (
        "POST",
        EMB,
        {"model": "tiny", "input": "x", "dimensions": 0},
        400,
        "dimensions",
        "dimensions",
    ),
    ("POST", EMB, {"model": "tiny", "input": "x", "dimensions": 999}, 400, "at most", "dimensions"),
    ("GET", "/v1/models/nope", None, 404, "model 'nope' not found", None),
    ("GET", "/v1/nothing", None, 404, "invalid URL (GET /v1/nothing)", None),
    ("POST", "/v1/models", {}, 405, "method not allowed", None),
    ("GET", CHAT, None, 405, "method not allowed", None),
]
TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}
TYPES |= {413: "invalid_request_error"}


async def _send(http: httpx.AsyncClient, method: str, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else None
    payload = body if isinstance(body, (dict, list)) else None
    return await http.request(method, path, content=content, json=payload)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words", "param"),
    BAD,
    ids=[f"{m} {p} {str(b)[:50]}" for m, p, b, *_ in BAD],
)
async def test_bad_input_is_openai_s_error_object(
    asgi, method, path, body, status, words, param
) -> None:
    transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        response = await _send(http, method, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"] and "\n" not in error["message"]
    assert error["type"] == TYPES[status] and error["param"] == param


async def test_busy_is_503_in_openai_s_shape(asgi) -> None:
    gate = asgi.state.server.registry.get("tiny:latest").gate
    transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
    gate.limit, gate.count = 0, gate.count + 1  # one holds the model; nobody may wait
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            response = await http.post(CHAT, json=_chat(max_tokens=2))
    finally:
        gate.limit, gate.count = 32, gate.count - 1
    assert response.status_code == 503
    assert response.json()["error"] | {"message": ""} == v1_shapes.error_json(503, "")["error"]
    assert response.json()["error"]["message"] == protocol.BUSY


async def test_the_server_keeps_serving_after_bad_input(asgi) -> None:
    transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        for method, path, body, *_ in BAD:
            await _send(http, method, path, body)
        chat = await http.post(CHAT, json=_chat(**SEEDED))
        native = await http.post("/api/generate", json={"model": "nope"})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 8
    assert native.status_code == 404 and native.json() == {"error": "model 'nope' not found"}


def test_ignored_and_harmless_fields_are_accepted(client) -> None:
    extra = {"user": "u", "metadata": {"a": "b"}, "store": False, "service_tier": "auto"}
    reply = client.chat.completions.create(
        model="tiny",
        messages=USER,
        tool_choice="none",
        modalities=["text"],
        response_format={"type": "text"},
        **extra,
        **SEEDED,
    )
    plain = client.chat.completions.create(model="tiny", messages=USER, **SEEDED)
    assert reply.choices[0].message.content == plain.choices[0].message.content
    steered = client.chat.completions.create(
        model="tiny", messages=USER, extra_body={"steer": "cat", "strength": 4.0}, **SEEDED
    )
    assert steered.choices[0].message.content != plain.choices[0].message.content
    # Ollama's top_k as an extra field: one candidate, so the seed no longer matters
    greedy = [
        client.chat.completions.create(
            model="tiny", messages=USER, extra_body={"top_k": 1}, **{**SEEDED, "seed": seed}
        )
        .choices[0]
        .message.content
        for seed in (5, 6)
    ]
    assert greedy[0] == greedy[1] != plain.choices[0].message.content
    same = client.chat.completions.create(
        model="tiny", messages=USER, max_completion_tokens=8, **{**SEEDED, "max_tokens": 8}
    )
    assert same.choices[0].message.content == plain.choices[0].message.content
