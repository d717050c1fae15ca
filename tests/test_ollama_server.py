"""``h2q-tui serve``: the official ``ollama`` client unchanged against it (list, show, ps,
generate, chat, embed), raw HTTP for the wire format (NDJSON framing, integer durations,
400/404/413/503, the error line after streaming began, a disconnect stopping the worker,
keep-alive), ``--follow``, and the command's refusals."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_helpers import LiveServer, crystallize_int8, hooked, make_run, wait_for

from h2q_tui.checkpoints import save_checkpoint
from h2q_tui.checkpoints import timing as timeline
from h2q_tui.cli import main as cli
from h2q_tui.config import resolve
from h2q_tui.models import build_model
from h2q_tui.ollama import direct, protocol, replies
from h2q_tui.ollama.models import Entry, Registry
from h2q_tui.ollama.server import ServeConfig, Server

FINAL_INTS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
OPTIONS = {"num_predict": 12, "seed": 7, "temperature": 0.9}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run with one checkpoint and its int8 crystallized folder."""
    run = make_run(tmp_path_factory.mktemp("serve"), "tiny")
    crystallize_int8(run)
    return run


@pytest.fixture(scope="module", params=["direct", "uvloop"])
def served(run, request):
    """(Server, base URL) of ``serve RUN`` on a real uvicorn: on serve's default stack (the
    generation thread writes each piece to the socket) and with every piece through the loop."""
    server = Server(Registry.discover([run]))
    with LiveServer(server.app, stack=request.param) as live:
        yield server, live.url


@pytest.fixture
def client(served):
    return ollama.Client(host=served[1])


def loaded(server: Server, url: str, name: str = "tiny:latest"):
    """Load ``name`` through the API (empty prompt) and return its model."""
    response = httpx.post(f"{url}/api/generate", json={"model": name}, timeout=30)
    assert response.json()["done_reason"] == "load"
    return server.registry.get(name).model


def final_fields_are_ints(final: dict) -> None:
    for key in FINAL_INTS:
        assert type(final[key]) is int and final[key] >= 0, (key, final.get(key))


# ----------------------------------------------------------------------------- the official client
def test_official_client_lists_shows_and_ps(client) -> None:
    names = [m.model for m in client.list().models]
    assert names == ["tiny:latest", "tiny:int8"]
    shown = client.show("tiny")
    assert shown.modelinfo["general.architecture"] == "microstream"
    assert shown.modelinfo["microstream.context_length"] == 32
    assert shown.details.family == "microstream" and shown.details.parameter_size == "77K"
    assert client.show("tiny:int8").details.quantization_level == "INT8"
    assert client.generate("tiny:int8", keep_alive="5m").done_reason == "load"
    running = {m.model: m for m in client.ps().models}
    assert "tiny:int8" in running and running["tiny:int8"].expires_at is not None
    assert running["tiny:int8"].context_length == 32


def test_official_client_generates_streaming_and_not_seeded(client) -> None:
    whole = client.generate("tiny", "Once upon", options=OPTIONS)
    again = client.generate("tiny", "Once upon", options=OPTIONS)
    assert whole.response == again.response and whole.response  # seeded: the same text
    parts = list(client.generate("tiny", "Once upon", options=OPTIONS, stream=True))
    assert "".join(p.response for p in parts) == whole.response
    assert not any(p.done for p in parts[:-1]) and parts[-1].done
    final = parts[-1]
    assert final.done_reason == "length" and final.eval_count == 12
    assert final.prompt_eval_count == len(b"Once upon")
    for key in FINAL_INTS:
        assert isinstance(getattr(final, key), int)
    other = client.generate("tiny", "Once upon", options={**OPTIONS, "seed": 8})
    assert other.response != whole.response
    stop = whole.response[5:7]
    cut = client.generate("tiny", "Once upon", options={**OPTIONS, "stop": [stop]})
    assert cut.done_reason == "stop" and cut.response == whole.response[: whole.response.find(stop)]


def test_official_client_chats(client) -> None:
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]
    reply = client.chat("tiny", messages=messages, options=OPTIONS)
    assert reply.message.role == "assistant" and reply.done
    assert reply.prompt_eval_count == len(protocol.render_chat(messages).encode())
    parts = list(client.chat("tiny", messages=messages, options=OPTIONS, stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content
    assert protocol.render_chat(messages) == "Be kind.\n\nUser: Hello\nAssistant:"


def test_official_client_embeds(client) -> None:
    both = client.embed("tiny", input=["a cat", "a dog"])
    assert len(both.embeddings) == 2 and len(both.embeddings[0]) == 128  # d_model of tiny
    assert all(abs(math.hypot(*v) - 1) < 1e-6 for v in both.embeddings)  # unit length
    legacy = client.embeddings("tiny", prompt="a cat").embedding
    norm = math.hypot(*legacy)
    assert all(abs(a - b / norm) < 1e-6 for a, b in zip(both.embeddings[0], legacy, strict=True))
    assert len(client.embed("tiny", input="a cat", dimensions=16).embeddings[0]) == 16


def test_response_errors_on_404_and_mid_stream(served, client) -> None:
    server, url = served
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate("nope", "x")
    assert raised.value.status_code == 404 and raised.value.error == "model 'nope' not found"
    model = loaded(server, url)
    with hooked(model, fail_after=4), pytest.raises(ollama.ResponseError) as raised:
        for _ in client.generate("tiny", "Once", stream=True, options={"num_predict": 50}):
            pass
    assert "boom" in raised.value.error
    with hooked(model, fail_after=4):  # raw: status 200, then one error line and no done
        response = httpx.post(
            f"{url}/api/generate", json={"model": "tiny", "prompt": "Once"}, timeout=30
        )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200 and set(lines[-1]) == {"error"}
    assert "\n" not in lines[-1]["error"] and not any(line.get("done") for line in lines)
    with hooked(model, fail_after=2):  # not streaming: a 500 with the error
        response = httpx.post(
            f"{url}/api/generate",
            json={"model": "tiny", "prompt": "Once", "stream": False},
            timeout=30,
        )
    assert response.status_code == 500 and "boom" in response.json()["error"]
    assert client.generate("tiny", "Once", options={"num_predict": 3}).done  # still serving


# ----------------------------------------------------------------------------- the wire
def test_ndjson_framing_per_token_flush_and_integer_durations(served, request, monkeypatch) -> None:
    server, url = served
    model = loaded(server, url)
    direct_before = server.direct_streams
    entry = server.registry.get("tiny:latest")
    loaded_at, loads = entry.loaded_at, []
    real_load = Entry._load
    monkeypatch.setattr(Entry, "_load", lambda self, *a: (loads.append(a), real_load(self, *a)))
    with (
        hooked(model, delay_s=0.02) as calls,
        httpx.stream(
            "POST",
            f"{url}/api/generate",
            json={"model": "tiny", "prompt": "Once", "options": {"num_predict": 20, "seed": 1}},
            timeout=30,
        ) as response,
    ):
        assert response.headers["content-type"].startswith(replies.NDJSON)
        chunks = response.iter_bytes()
        first = next(chunks)
        assert server.jobs, "the first line came while the generation was still running"
        body = first + b"".join(chunks)
    assert calls["n"] >= 20
    assert body.endswith(b"\n") and b"\n\n" not in body
    lines = [json.loads(line) for line in body.split(b"\n")[:-1]]
    assert all(line["done"] is False for line in lines[:-1]) and lines[-1]["done"] is True
    final = lines[-1]
    final_fields_are_ints(final)
    assert final["eval_count"] == 20 and len(lines) <= 21
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]
    assert final["eval_duration"] >= 19 * 0.02e9  # measured: 19 forwards of ≥ 20 ms
    # already loaded: a hot start, nothing loaded again (load_duration is that check's time)
    assert loads == [] and entry.model is model and entry.loaded_at == loaded_at
    assert final["load_duration"] <= final["total_duration"] - final["eval_duration"]
    # serve's default stack: the generation thread wrote the pieces; through the loop: not
    direct = request.node.callspec.params["served"] == "direct"
    assert server.direct_streams == direct_before + direct


def test_pieces_made_before_the_thread_takes_the_socket_go_first(
    served, monkeypatch, request
) -> None:
    """The loop hands the socket over late (it sleeps first): the pieces queued meanwhile are
    written before the thread's own, and the text is the one "stream": false gives."""
    server, url = served
    model = loaded(server, url)
    handed = direct.socket_of

    def late(scope):
        time.sleep(0.15)  # blocks the loop while the generation queues pieces
        return handed(scope)

    monkeypatch.setattr(direct, "socket_of", late)
    direct_before = server.direct_streams
    payload = {"model": "tiny", "prompt": "Once", "options": {"num_predict": 40, "seed": 3}}
    with hooked(model, delay_s=0.01):
        whole = httpx.post(f"{url}/api/generate", json={**payload, "stream": False}, timeout=30)
        streamed = httpx.post(f"{url}/api/generate", json=payload, timeout=30)
    lines = [json.loads(line) for line in streamed.content.splitlines()]
    assert "".join(line["response"] for line in lines) == whole.json()["response"]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 40 and len(lines) <= 41
    direct_stack = request.node.callspec.params["served"] == "direct"
    assert server.direct_streams == direct_before + direct_stack


def test_generation_decodes_on_one_thread_that_ends(served) -> None:
    server, url = served
    model = loaded(server, url)
    seen: list[tuple[str, int]] = []
    handle = model.register_forward_hook(
        lambda *a: seen.append((threading.current_thread().name, torch.get_num_threads()))
    )
    try:
        httpx.post(
            f"{url}/api/generate",
            json={"model": "tiny", "prompt": "x", "options": {"num_predict": 3}},
            timeout=30,
        )
    finally:
        handle.remove()
    names = {name for name, _ in seen}
    assert len(names) == 1 and names.pop().startswith("h2q-serve-generate-")
    assert {n for _, n in seen} == {1}
    wait_for(
        lambda: not any(t.name.startswith("h2q-serve-generate-") for t in threading.enumerate()),
        "the generation thread to end",
    )


def test_a_client_that_disconnects_stops_its_generation(served) -> None:
    server, url = served
    model = loaded(server, url)
    payload = {"model": "tiny", "prompt": "Once", "options": {"num_predict": 4000}}
    with hooked(model, delay_s=0.005) as calls:
        with httpx.stream("POST", f"{url}/api/generate", json=payload, timeout=30) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
            (job,) = server.jobs
        wait_for(lambda: not job.thread.is_alive(), "the worker to end", timeout=5)
    assert calls["n"] < 1000  # it stopped long before 4000 tokens
    assert (job.thread.name, "cancelled") in server.ended
    assert server.registry.get("tiny:latest").gate.count == 0  # the model is free again


def test_a_full_queue_answers_503(served) -> None:
    server, url = served
    model = loaded(server, url)
    gate = server.registry.get("tiny:latest").gate
    gate.limit = 1  # one generates, one waits, the third is refused
    payload = {"model": "tiny", "prompt": "Once", "options": {"num_predict": 2000}}
    waiting: dict = {}

    def second() -> None:
        waiting["response"] = httpx.post(
            f"{url}/api/generate",
            json={"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 2}},
            timeout=30,
        )

    try:
        with hooked(model, delay_s=0.005):
            with httpx.stream("POST", f"{url}/api/generate", json=payload, timeout=30) as first:
                lines = first.iter_lines()  # kept: dropping it would close the connection
                next(lines)
                thread = threading.Thread(target=second)
                thread.start()
                wait_for(lambda: gate.count == 2, "the second request to queue")
                third = httpx.post(f"{url}/api/generate", json=payload, timeout=30)
                assert third.status_code == 503 and third.json() == {"error": protocol.BUSY}
            thread.join(30)
        assert waiting["response"].status_code == 200 and waiting["response"].json()["done"]
    finally:
        gate.limit = 32


def test_keep_alive_loads_and_unloads(served, client) -> None:
    server, url = served

    def running() -> list[str]:
        return [m.model for m in client.ps().models]

    assert client.generate("tiny", keep_alive=0).done_reason == "unload"
    assert "tiny:latest" not in running()
    assert client.generate("tiny", keep_alive="5m").done_reason == "load"
    assert "tiny:latest" in running()
    client.generate("tiny", "Once", keep_alive=0, options={"num_predict": 2})
    assert "tiny:latest" not in running()  # unloaded right after the request
    client.generate("tiny", "Once", keep_alive="300ms", options={"num_predict": 2})
    assert "tiny:latest" in running()
    wait_for(lambda: "tiny:latest" not in running(), "the keep-alive to expire", timeout=5)
    client.generate("tiny", keep_alive=-1)
    (shown,) = [m for m in client.ps().models if m.model == "tiny:latest"]
    assert shown.expires_at.year > 2200  # forever
    assert "tiny:latest" not in server.unload_expired(now=time.time() + 1e9)


def test_loads_are_recorded_in_the_timeline(served, client) -> None:
    client.generate("tiny", keep_alive=0)
    client.generate("tiny", keep_alive="5m")
    event = timeline.latest("serve")
    assert event is not None and event.kind == "load" and event.step == 5
    assert event.what == "run tiny-run step 5" and event.total_s > 0


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def asgi(run):
    """The app in process (httpx.ASGITransport; no sockets, responses buffered)."""
    return Server(Registry.discover([run]), ServeConfig()).app


GEN = "/api/generate"
BAD = [
    ("POST", GEN, b"{bad", 400, "invalid JSON"),
    ("POST", "/api/chat", b"{bad", 400, "invalid JSON"),
    ("POST", "/api/show", b"{bad", 400, "invalid JSON"),
    ("POST", "/api/embed", b"{bad", 400, "invalid JSON"),
    ("POST", "/api/embeddings", b"{bad", 400, "invalid JSON"),
    ("POST", "/api/pull", b"{bad", 400, "invalid JSON"),
    ("POST", GEN, b"", 400, "missing request body"),
    ("POST", GEN, b"[1, 2]", 400, "JSON object"),
    ("POST", GEN, {}, 400, "model is required"),
    ("POST", GEN, {"model": 5}, 400, "model is required"),
    ("POST", GEN, {"model": "tiny", "prompt": 5}, 400, "prompt must be a string"),
    ("POST", GEN, {"model": "tiny", "stream": "yes"}, 400, "stream must be true or false"),
    ("POST", GEN, {"model": "tiny", "options": "fast"}, 400, "options must be an object"),
    ("POST", GEN, {"model": "tiny", "options": {"temperature": "hot"}}, 400, "temperature"),
    ("POST", GEN, {"model": "tiny", "options": {"top_p": 0}}, 400, "top_p"),
    ("POST", GEN, {"model": "tiny", "options": {"top_k": 2.5}}, 400, "integer"),
    ("POST", GEN, {"model": "tiny", "options": {"num_predict": -5}}, 400, "num_predict"),
    ("POST", GEN, {"model": "tiny", "options": {"num_predict": 10**9}}, 400, "num_predict"),
    ("POST", GEN, {"model": "tiny", "options": {"stop": [1]}}, 400, "stop"),
    ("POST", GEN, {"model": "tiny", "options": {"strength": 0.5}}, 400, "steer word"),
    (
        "POST",
        GEN,
        {"model": "tiny", "prompt": "x", "options": {"steer": "cat", "strength": 1, "layer": 99}},
        400,
        "layer must be in 0..1",
    ),
    ("POST", GEN, {"model": "tiny", "keep_alive": "soon"}, 400, "keep_alive"),
    ("POST", GEN, {"model": "tiny", "prompt": "x", "context": [-1]}, 400, "context"),
    ("POST", GEN, {"model": "tiny", "context": "abc"}, 400, "context"),
    ("POST", "/api/chat", {"model": "tiny", "messages": "hi"}, 400, "messages must be a list"),
    ("POST", "/api/chat", {"model": "tiny", "messages": [{"role": "robot"}]}, 400, "role"),
    ("POST", "/api/embed", {"model": "tiny", "input": 5}, 400, "input"),
    ("POST", "/api/embed", {"model": "tiny", "input": "x", "dimensions": 0}, 400, "dimensions"),
    ("POST", "/api/embed", {"model": "tiny", "input": "x", "dimensions": 999}, 400, "dimensions"),
    ("POST", "/api/embed", {"model": "tiny", "input": "x" * 99, "truncate": False}, 400, "exceeds"),
    ("POST", GEN, {"model": "tiny", "prompt": "x" * 10_000_000}, 413, "limit"),
    ("GET", GEN, None, 405, "method not allowed"),
    ("GET", "/api/nothing", None, 404, "page not found"),
] + [
    ("POST", path, {"model": model, "prompt": "x", "input": "x", "messages": []}, status, words)
    for path in (GEN, "/api/chat", "/api/show", "/api/embed", "/api/embeddings", "/api/pull")
    for model, status, words in (
        ("nope", 404, "model 'nope' not found"),
        ("../../etc/passwd", 400, "invalid model name"),
        ("tiny:../x", 400, "invalid model name"),
    )
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    BAD,
    ids=[f"{m} {p} {str(b)[:40]}" for m, p, b, _, _ in BAD],
)
async def test_bad_input_is_refused_in_one_line(asgi, method, path, body, status, words) -> None:
    transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        content = body if isinstance(body, bytes) else None
        payload = body if isinstance(body, (dict, list)) else None
        response = await http.request(method, path, content=content, json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error and "\n" not in error


async def test_the_server_keeps_serving_after_bad_input(asgi) -> None:
    transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        for method, path, body, _, _ in BAD[:12]:
            content = body if isinstance(body, bytes) else None
            payload = body if isinstance(body, (dict, list)) else None
            await http.request(method, path, content=content, json=payload)
        assert (await http.get("/")).text == "Ollama is running"
        assert (await http.head("/")).status_code == 200
        assert (await http.get("/api/version")).json()["version"]
        response = await http.post(
            GEN, json={"model": "tiny", "prompt": "Once", "stream": False, "options": OPTIONS}
        )
    assert response.status_code == 200 and response.json()["eval_count"] == 12
    final_fields_are_ints(response.json())


# ----------------------------------------------------------------------------- hostile input
DEEP = b'{"model": "tiny", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE = b"9" * 400  # an integer JSON reads, too large for a float


def _gen(**body) -> bytes:
    return json.dumps({"model": "tiny", "prompt": "x", **body}).encode()


def _huge(key: bytes) -> bytes:
    """A body whose ``key`` (``options.seed``…) holds :data:`HUGE` (json.dumps cannot)."""
    inner, _, outer = key.rpartition(b".")
    value = b'"%s": %s' % (outer, HUGE)
    if inner:
        value = b'"%s": {%s}' % (inner, value)
    return b'{"model": "tiny", "prompt": "x", "input": "x", %s}' % value


CHAT = {"messages": [{"role": "user", "content": "x"}]}
HOSTILE = [
    *[(path, DEEP, "nested too deeply") for path in (GEN, "/api/chat", "/api/show")],
    *[(path, DEEP, "nested too deeply") for path in ("/api/embed", "/api/embeddings", "/api/pull")],
    (GEN, _huge(b"options.temperature"), "temperature"),
    (GEN, _huge(b"options.seed"), "seed"),
    (GEN, _huge(b"keep_alive"), "keep_alive"),
    ("/api/embed", _huge(b"keep_alive"), "keep_alive"),
    (GEN, _gen(keep_alive=1e300), "keep_alive"),
    (GEN, _gen(options={"seed": 2**70}), "seed must be in 0..2**64-1"),
    (GEN, _gen(options={"seed": -2}), "seed"),
    (GEN, _gen(options={"temperature": 1e-300}), "temperature must be 0 (greedy) or in"),
    (GEN, _gen(options={"repeat_penalty": 1e-300}), "repeat_penalty must be in"),
    (GEN, _gen(options={"steer": "cat", "strength": 1e308}), "strength must be in"),
    (GEN, _gen(stream=False, options={"steer": "cat", "strength": -1e308}), "strength"),
    ("/api/chat", _gen(**CHAT, options={"temperature": 1e-300}), "temperature"),
    (GEN, _gen(options={"num_predict": 10**3000}), "digits"),  # the message stays short
]


class ErrorLog(logging.Handler):
    """What the server logs at ERROR (uvicorn's tracebacks) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.mark.parametrize("stack", ["direct", "uvloop", "asyncio"])
def test_hostile_numbers_and_nesting_are_400_without_a_traceback(run, stack) -> None:
    log = ErrorLog()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(log)
    try:
        server = Server(Registry.discover([run]))
        with LiveServer(server.app, stack=stack) as live:
            for path, body, words in HOSTILE:
                response = httpx.post(f"{live.url}{path}", content=body, timeout=60)
                assert response.status_code == 400, (path, body[:80], response.text[:300])
                error = response.json()["error"]
                assert words in error and "\n" not in error and len(error) < 200, error
            assert httpx.get(f"{live.url}/api/ps", timeout=10).status_code == 200
            seeded = httpx.post(
                f"{live.url}{GEN}",
                json={"model": "tiny", "prompt": "Once", "stream": False, "options": OPTIONS},
                timeout=60,
            )
            assert seeded.status_code == 200 and seeded.json()["eval_count"] == 12
    finally:
        logger.removeHandler(log)
    assert log.lines == []


def test_seed_minus_one_is_a_random_seed_as_in_ollama(asgi_client_sync) -> None:
    texts = set()
    for _ in range(4):
        response = asgi_client_sync(_gen(stream=False, options={"seed": -1, "num_predict": 8}))
        assert response.status_code == 200, response.text
        texts.add(response.json()["response"])
    assert len(texts) > 1


NUMERIC = (
    "temperature",
    "top_p",
    "repeat_penalty",
    "strength",
    "top_k",
    "seed",
    "num_predict",
    "layer",
)
numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e-300, 1e308, -1e308, 2**64, 2**64 - 1, 5e-324, 1e-3, 1e3]),
)


@settings(max_examples=150, deadline=None, database=None)
@given(field=st.sampled_from((*NUMERIC, "keep_alive")), value=numbers)
def test_any_number_in_any_numeric_field_is_served_or_refused_with_400(
    asgi_client_sync, field, value
) -> None:
    options = {"num_predict": 2} if field != "num_predict" else {}
    if field == "strength":
        options["steer"] = "cat"
    body = {"stream": False, "options": options}
    if field == "keep_alive":
        body["keep_alive"] = value
    else:
        options[field] = value
    response = asgi_client_sync(_gen(**body))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert field in error and "\n" not in error and len(error) < 200, error
    else:
        assert response.json()["done"] is True


@pytest.fixture(scope="module")
def asgi_client_sync(run):
    """POST /api/generate to the app in process, answering at most 8 tokens per request."""
    import asyncio

    app = Server(Registry.discover([run]), ServeConfig(max_predict=8)).app
    loop = asyncio.new_event_loop()

    async def post(body: bytes):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            return await http.post(GEN, content=body)

    yield lambda body: loop.run_until_complete(post(body))
    loop.close()


# ----------------------------------------------------------------------------- --follow
async def test_follow_swaps_in_the_newest_checkpoint_between_requests(tmp_path) -> None:
    run = make_run(tmp_path, "live", steps=(5,))
    registry = Registry.discover([run], follow=True)
    app = Server(registry).app
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    request = {"model": "live", "prompt": "Once", "stream": False, "options": OPTIONS}
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        before = (await http.post(GEN, json=request)).json()
        model = registry.get("live:latest").model
        step = (await http.post("/api/show", json={"model": "live"})).json()["model_info"]
        assert step["h2q.step"] == 5
        config = resolve("tiny")
        torch.manual_seed(99)
        save_checkpoint(run, build_model(config.model), config, 9, "live-run", {})
        swapped = (await http.post(GEN, json=request)).json()
        warm = (await http.post(GEN, json=request)).json()
        shown = (await http.post("/api/show", json={"model": "live"})).json()
    assert shown["model_info"]["h2q.step"] == 9
    assert swapped["response"] != before["response"] and warm["response"] == swapped["response"]
    assert swapped["load_duration"] > warm["load_duration"]
    event = timeline.latest("serve")
    assert event.kind == "swap" and event.step == 9 and "5 → 9" in event.note
    assert registry.get("live:latest").model is model and "copy" in event.phases  # in place


def test_follow_waits_for_a_run_without_checkpoints(tmp_path) -> None:
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    registry = Registry.discover([tmp_path / "fresh"], follow=True)
    assert "waiting" in registry.warnings[0]
    with pytest.raises(Exception, match="no checkpoint"):
        registry.get("fresh:latest").ensure_loaded()


# ----------------------------------------------------------------------------- the command
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("h2q-tui: error: "), err
    return err


def test_a_port_in_use_is_one_line_and_exit_2(run, capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(run), "--port", str(port)]) == 2
    assert "in use" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["/no/such/run"], "not found"),
        (["RUN", "--keep-alive", "soon"], "--keep-alive"),
        (["RUN", "--port", "70000"], "--port"),
        (["RUN/checkpoints/step_00000005", "--follow"], "--follow needs a run dir"),
        (["RUN", "--queue", "-1"], "--queue"),
        (["RUN", "--bogus"], "unrecognized arguments"),
        (["RUN", "--stack", "fast"], "invalid choice"),
    ],
)
def test_bad_serve_arguments(run, capsys, args, words) -> None:
    argv = [a.replace("RUN", str(run)) for a in args]
    assert cli.main(["serve", *argv]) == 2
    assert words in one_line_error(capsys)


def test_serve_binds_loopback_and_warns_off_it(run, capsys, monkeypatch) -> None:
    import uvicorn

    bound = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: bound.append(sockets[0].getsockname())
    )
    assert cli.main(["serve", str(run), "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert bound[0][0] == "127.0.0.1" and "no authentication" not in err
    assert "tiny:latest" in out and "tiny:int8" in out
    assert cli.main(["serve", str(run), "--port", "0", "--host", "0.0.0.0"]) == 0
    assert "no authentication" in capsys.readouterr().err
