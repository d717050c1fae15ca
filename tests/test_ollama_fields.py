"""``h2q-tui serve``: every documented field of ``/api/generate`` and ``/api/chat`` honoured or
refused — ``format`` (output validated with ``jsonschema``), ``logprobs``/``top_logprobs``
(against a direct forward pass of the served checkpoint), ``raw``, ``truncate``/``shift``,
``num_keep``, ``min_p``, ``repeat_last_n``; ``suffix``, ``tools``, ``think``, ``images``,
``template`` and the options we cannot do refused with status 400 and one line, before the
model loads; hardware options and unknown fields ignored; ``/api/show``'s capabilities."""

from __future__ import annotations

import asyncio
import json
import string
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import ollama
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_helpers import make_run, serving
from pydantic import BaseModel, ConfigDict

from h2q_tui.checkpoints import load_checkpoint
from h2q_tui.generation.sampling import SamplingConfig, choose_token, choose_token_reference
from h2q_tui.ollama import protocol
from h2q_tui.ollama.models import Registry
from h2q_tui.ollama.server import ServeConfig, Server

OPTIONS = {"num_predict": 10, "seed": 7, "temperature": 0.9}
GEN = "/api/generate"
CONTEXT = 32  # the tiny preset's


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("fields"), "tiny")


@pytest.fixture(scope="module")
def served(run):
    with serving(run) as pair:
        yield pair


@pytest.fixture
def client(served) -> ollama.Client:
    return ollama.Client(host=served[1])


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


# ----------------------------------------------------------------------------- format
class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    mood: Literal["happy", "sad"]


def test_format_schema_through_the_official_client_validates(client) -> None:
    schema = Verdict.model_json_schema()
    for seed in (1, 2, 3):
        reply = client.generate(
            "tiny", "Answer:", format=schema, options={"num_predict": 60, "seed": seed}
        )
        assert reply.done_reason == "stop", reply.response
        jsonschema.validate(json.loads(reply.response), schema)
        Verdict.model_validate_json(reply.response)
    chat = client.chat(
        "tiny",
        messages=[{"role": "user", "content": "How is it?"}],
        format=schema,
        options={"num_predict": 60, "seed": 4},
    )
    jsonschema.validate(json.loads(chat.message.content), schema)


def test_format_json_gives_an_object_streamed_or_not(client) -> None:
    options = {"num_predict": 80, "seed": 0}
    whole = client.generate("tiny", "JSON:", format="json", options=options)
    assert whole.done_reason == "stop" and isinstance(json.loads(whole.response), dict)
    parts = list(client.generate("tiny", "JSON:", format="json", options=options, stream=True))
    assert "".join(p.response for p in parts) == whole.response


def test_a_schema_the_grammar_engine_cannot_do_is_400_in_one_line(served) -> None:
    url = served[1]
    post(url, GEN, {"model": "tiny", "keep_alive": 0})  # unloaded: a refusal must not load it
    for schema, words in (
        ({"not": {"type": "string"}}, "unsupported JSON schema"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5) is greater than maximum"),
    ):
        body = {"model": "tiny", "prompt": "J", "format": schema, "stream": False}
        response = post(url, "/api/chat", {**body, "messages": [{"role": "user", "content": "J"}]})
        assert response.status_code == 400 and words in response.json()["error"]
        assert "\n" not in response.json()["error"]
        assert httpx.get(f"{url}/api/ps").json()["models"] == []  # refused before the load
    assert post(url, GEN, {"model": "tiny", "prompt": "J", "stream": False}).status_code == 200


# ----------------------------------------------------------------------------- logprobs
def test_logprobs_are_the_served_models_raw_distribution(run, served, client) -> None:
    options = {**OPTIONS, "repeat_penalty": 1.5, "top_k": 5}  # the draw's settings: not in them
    reply = client.generate("tiny", "Once upon", options=options, logprobs=True, top_logprobs=3)
    ids, prompt = reply.context, len(b"Once upon")
    generated = ids[prompt:]
    assert len(generated) == reply.eval_count == len(reply.logprobs) == 10
    model = load_checkpoint(run).model
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)
    body = {"model": "tiny", "prompt": "Once upon", "stream": False, "options": options}
    wire = post(served[1], GEN, {**body, "logprobs": True, "top_logprobs": 3}).json()
    assert wire["response"] == reply.response
    for i, (token, record) in enumerate(zip(generated, reply.logprobs, strict=True)):
        expected = log_probs[prompt - 1 + i]
        assert record.logprob == pytest.approx(float(expected[token]), abs=1e-4)
        top = torch.topk(expected, 3)
        assert [t.logprob for t in record.top_logprobs] == pytest.approx(
            top.values.tolist(), abs=1e-4
        )
        shown = wire["logprobs"][i]  # the bytes: the official client does not read them
        assert shown["bytes"] == [token] and shown["logprob"] == record.logprob
        assert [t["bytes"] for t in shown["top_logprobs"]] == [[t] for t in top.indices.tolist()]
        assert shown["token"] == bytes([token]).decode(errors="replace")
    parts = list(client.generate("tiny", "Once upon", options=options, logprobs=True, stream=True))
    streamed = [record for part in parts for record in part.logprobs or []]
    assert [r.logprob for r in streamed] == [r.logprob for r in reply.logprobs]
    assert all(not r.top_logprobs for r in streamed)  # top_logprobs 0: the token alone
    assert parts[-1].done and not parts[-1].logprobs
    lines = post(served[1], GEN, {**body, "stream": True, "logprobs": True}).text.splitlines()
    pieces = [json.loads(line) for line in lines][:-1]
    text = b"".join(bytes(b for r in piece["logprobs"] for b in r["bytes"]) for piece in pieces)
    assert text == bytes(generated)  # each piece carries the tokens that made its text
    assert "".join(piece["response"] for piece in pieces) == reply.response


def test_logprobs_on_chat_and_absent_unless_asked(served) -> None:
    url = served[1]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    body["options"] = OPTIONS
    plain = post(url, "/api/chat", body).json()
    assert "logprobs" not in plain
    asked = post(url, "/api/chat", {**body, "logprobs": True, "top_logprobs": 20}).json()
    assert asked["message"] == plain["message"]  # logprobs change nothing drawn
    assert len(asked["logprobs"]) == asked["eval_count"]
    assert all(len(r["top_logprobs"]) == 20 for r in asked["logprobs"])
    streamed = post(url, GEN, {"model": "tiny", "prompt": "Hi", "options": OPTIONS})
    assert b"logprobs" not in streamed.content


# ----------------------------------------------------------------------------- raw, truncate, shift
def test_raw_skips_the_system_prompt_and_returns_no_context(served, client) -> None:
    server, _ = served
    server.registry.get("tiny:latest").system = "Be brief."
    try:
        templated = client.generate("tiny", "Once", options=OPTIONS)
        raw = client.generate("tiny", "Once", raw=True, options=OPTIONS)
    finally:
        server.registry.get("tiny:latest").system = ""
    assert templated.prompt_eval_count == len(b"Be brief.\n\nOnce") and templated.context
    assert raw.prompt_eval_count == len(b"Once") and raw.context is None
    with pytest.raises(ollama.ResponseError, match="raw mode does not support") as caught:
        client.generate("tiny", "Once", raw=True, system="Be brief.")
    assert caught.value.status_code == 400


def test_a_long_prompt_keeps_its_last_tokens_or_is_refused(served) -> None:
    url = served[1]
    prompt = string.ascii_letters  # 52 distinct bytes, longer than the context
    body = {"model": "tiny", "prompt": prompt, "stream": False, "options": {"num_predict": 2}}
    cut = post(url, GEN, body).json()
    assert cut["prompt_eval_count"] == CONTEXT  # Ollama's rule: num_keep, then the end
    assert bytes(cut["context"][:CONTEXT]) == prompt[-CONTEXT:].encode()
    kept = post(url, GEN, {**body, "options": {"num_predict": 2, "num_keep": 4}}).json()
    assert bytes(kept["context"][:CONTEXT]) == (prompt[:4] + prompt[-(CONTEXT - 4) :]).encode()
    refused = post(url, GEN, {**body, "truncate": False})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the input length exceeds the context length")
    fits = post(url, GEN, {**body, "prompt": prompt[:CONTEXT], "truncate": False}).json()
    assert fits["prompt_eval_count"] == CONTEXT


def test_a_long_chat_drops_its_oldest_messages_as_ollama_does(served) -> None:
    url = served[1]
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a" * 10},
        {"role": "assistant", "content": "b" * 10},
        {"role": "user", "content": "hi"},
    ]
    body = {"model": "tiny", "messages": messages, "stream": False}
    body["options"] = {"num_predict": 2}
    assert len(protocol.render_chat(messages)) > CONTEXT
    kept = protocol.render_chat([messages[0], messages[3]])  # the system and the last
    assert post(url, "/api/chat", body).json()["prompt_eval_count"] == len(kept)
    refused = post(url, "/api/chat", {**body, "truncate": False})
    assert refused.status_code == 400 and "exceeds the context length" in refused.json()["error"]


def test_shift_false_stops_at_the_context_shift_true_goes_on(served) -> None:
    url = served[1]
    body = {"model": "tiny", "prompt": "x" * 20, "stream": False}
    body["options"] = {"num_predict": 30, "seed": 3}
    stopped = post(url, GEN, {**body, "shift": False}).json()
    assert stopped["done_reason"] == "length" and stopped["eval_count"] == CONTEXT - 20
    going = post(url, GEN, body).json()
    assert going["eval_count"] == 30
    assert going["context"][:CONTEXT] == stopped["context"]  # the same draws up to there
    full = post(url, GEN, {**body, "prompt": "x" * CONTEXT, "shift": False}).json()
    assert full["done_reason"] == "length" and full["eval_count"] == 0


# ----------------------------------------------------------------------------- options
def seeded(url: str, **options) -> str:
    body = {"model": "tiny", "prompt": "Once upon", "stream": False}
    body["options"] = {**OPTIONS, **options}
    response = post(url, GEN, body)
    assert response.status_code == 200, response.text
    return response.json()["response"]


def test_ignored_options_and_unknown_fields_change_nothing(served) -> None:
    url = served[1]
    plain = seeded(url)
    ignored = dict(num_thread=3, num_gpu=1, main_gpu=0, use_mmap=True, numa=False, num_batch=2)
    neutral = dict(mirostat=0, typical_p=1.0, tfs_z=1, penalize_newline=True, min_p=0)
    assert seeded(url, **ignored, **neutral, num_ctx=4096, draft_num_predict=4) == plain
    assert seeded(url, something_new=1) == plain  # an option Ollama does not document
    body = {"model": "tiny", "prompt": "Once upon", "stream": False, "options": OPTIONS}
    extra = post(url, GEN, {**body, "whatever": {"a": 1}, "think": False, "suffix": ""})
    assert extra.json()["response"] == plain  # unknown top-level fields: ignored


def test_min_p_and_repeat_last_n_are_honoured(served) -> None:
    url = served[1]
    assert seeded(url, min_p=1.0) == seeded(url, temperature=0)  # only the likeliest is left
    assert seeded(url, repeat_last_n=0) == seeded(url, repeat_penalty=1.0)  # penalties off
    assert seeded(url, repeat_last_n=-1) == seeded(url, repeat_last_n=CONTEXT)


@pytest.mark.parametrize("min_p,window", [(0.05, 0), (0.3, 4), (0.0, 1), (0.9, 16)])
def test_fast_sampling_draws_the_reference_token_with_min_p_and_a_window(min_p, window) -> None:
    config = SamplingConfig(
        temperature=0.8, top_k=40, min_p=min_p, penalty_window=window, presence_penalty=0.5
    )
    torch.manual_seed(0)
    fast, slow = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    generated: list[int] = []
    for _ in range(40):
        logits = torch.randn(256) * 3
        token = choose_token(logits, generated, config, fast)
        assert token == choose_token_reference(logits, generated, config, slow)
        generated.append(token)


# ----------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def asgi(run):
    """The app in process, and its registry (to see that nothing was loaded)."""
    registry = Registry.discover([run])
    return Server(registry, ServeConfig()).app, registry


CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
REFUSED = [
    (GEN, {"suffix": "    return x"}, "tiny:latest does not support insert"),
    (GEN, {"suffix": 5}, "suffix must be a string"),
    ("/api/chat", {**CHAT, "tools": [{"type": "function"}]}, "does not support tools"),
    ("/api/chat", {**CHAT, "tools": "all"}, "tools must be a list"),
    (GEN, {"think": True}, '"tiny" does not support thinking'),
    ("/api/chat", {**CHAT, "think": "high"}, "does not support thinking"),
    (GEN, {"think": "deep"}, "invalid think value"),
    (GEN, {"think": 1}, "think must be a boolean or string"),
    (GEN, {"images": ["aGk="]}, "tiny:latest does not support vision"),
    (
        "/api/chat",
        {"messages": [{"role": "user", "content": "Hi", "images": ["aGk="]}]},
        "does not support vision",
    ),
    (GEN, {"template": "{{ .Prompt }}"}, "template is not supported"),
    (GEN, {"raw": True, "system": "Be brief."}, "raw mode does not support template"),
    (GEN, {"raw": True, "context": [1, 2]}, "raw mode does not support template"),
    (GEN, {"raw": "yes"}, "raw must be true or false"),
    (GEN, {"format": "xml"}, 'invalid format: "xml"; expected "json" or a valid JSON Schema'),
    (GEN, {"format": 5}, "invalid format: 5"),
    (GEN, {"format": ["json"]}, "invalid format"),
    ("/api/chat", {**CHAT, "format": {"type": 5}}, "invalid format: invalid JSON schema"),
    (GEN, {"format": {"minLength": -1}}, "invalid JSON schema"),
    (GEN, {"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    (GEN, {"top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
    (GEN, {"logprobs": True, "top_logprobs": "3"}, "top_logprobs must be an integer"),
    (GEN, {"logprobs": "yes"}, "logprobs must be true or false"),
    (GEN, {"truncate": "no"}, "truncate must be true or false"),
    (GEN, {"shift": 0}, "shift must be true or false"),
    (GEN, {"options": {"mirostat": 2}}, "option mirostat 2 is not supported"),
    (GEN, {"options": {"typical_p": 0.7}}, "typical_p"),
    (GEN, {"options": {"tfs_z": 0.9}}, "tfs_z"),
    (GEN, {"options": {"penalize_newline": False}}, "penalize_newline"),
    (GEN, {"options": {"num_ctx": 16}}, "num_ctx 16 is below the model's context of 32"),
    (GEN, {"options": {"num_ctx": "big"}}, "num_ctx"),
    (GEN, {"options": {"num_thread": "many"}}, "option 'num_thread' must be an integer"),
    (GEN, {"options": {"use_mmap": "yes"}}, "option 'use_mmap' must be true or false"),
    (GEN, {"options": {"min_p": 2}}, "min_p must be in 0..1"),
    (GEN, {"options": {"repeat_last_n": -5}}, "repeat_last_n must be >= -1"),
    (GEN, {"options": {"num_keep": -3}}, "num_keep must be >= -1"),
]


@pytest.mark.parametrize(
    ("path", "fields", "words"), REFUSED, ids=[str(f)[:50] for _, f, _ in REFUSED]
)
async def test_refused_fields_are_400_in_one_line_before_the_model_loads(
    asgi, path, fields, words
) -> None:
    app, registry = asgi
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    body = {"model": "tiny", "prompt": "Once", **fields}
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        response = await http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error and "\n" not in error, error
    assert not registry.get("tiny:latest").loaded


def test_refusals_through_the_official_client_and_the_server_keeps_serving(client) -> None:
    for call in (
        lambda: client.generate("tiny", "def f(x):", suffix="    return x"),
        lambda: client.generate("tiny", "Once", think=True),
        lambda: client.generate("tiny", "Once", images=[b"\x89PNG"]),
        lambda: client.chat("tiny", messages=[{"role": "user", "content": "Hi"}], tools=[tool]),
        lambda: client.generate("tiny", "Once", logprobs=True, top_logprobs=50),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 400 and "\n" not in caught.value.error
    reply = client.generate("tiny", "Once", options=OPTIONS)
    assert reply.done and reply.eval_count == 10


def tool(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city
    """
    return city


# ----------------------------------------------------------------------------- /api/show
def test_show_lists_capabilities_and_what_happens_past_the_context(client) -> None:
    shown = client.show("tiny")
    assert shown.capabilities == ["completion", "embedding"]
    assert "done_reason length" in shown.modelinfo["h2q.shift"]
    assert f"{CONTEXT} in all" in shown.modelinfo["h2q.truncate"]
    assert f"num_ctx {CONTEXT}" in shown.parameters


# ----------------------------------------------------------------------------- any number
numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 20, 21, 1.0, 0.5, 1e308, -1e308, 10**400, True, "1", None]),
)
NEW_FIELDS = (
    "min_p",
    "repeat_last_n",
    "num_keep",
    "num_ctx",
    "num_thread",
    "mirostat",
    "typical_p",
    "tfs_z",
    "penalize_newline",
    "top_logprobs",
)


@pytest.fixture(scope="module")
def generate_in_process(run):
    """POST /api/generate to the app in process, at most 2 tokens per request."""
    app = Server(Registry.discover([run]), ServeConfig(max_predict=2)).app
    loop = asyncio.new_event_loop()

    async def post(body: dict):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            return await http.post(GEN, content=json.dumps(body))  # NaN, Infinity too

    yield lambda body: loop.run_until_complete(post(body))
    loop.close()


@settings(max_examples=120, deadline=None, database=None)
@given(field=st.sampled_from(NEW_FIELDS), value=numbers)
def test_any_value_of_a_new_field_is_served_or_refused_naming_it(
    generate_in_process, field, value
) -> None:
    body = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 2}}
    if field == "top_logprobs":
        body |= {"logprobs": True, "top_logprobs": value}
    else:
        body["options"][field] = value
    response = generate_in_process(body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert field in error and "\n" not in error and len(error) < 200, error
    else:
        assert response.json()["done"] is True
