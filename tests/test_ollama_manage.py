"""Model management in ``h2q-tui serve``: ``/api/create``, ``/api/copy``, ``/api/delete`` through
the official ``ollama`` client, the registry file (a restart keeps the names; a hostile, corrupt
or read-only file is one warning), the allowed roots, and ``/api/swap`` during a stream."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import ollama
import pytest
from ollama_helpers import LiveServer, hooked, make_run, wait_for

from h2q_tui.cli import main as cli
from h2q_tui.ollama import registry_file
from h2q_tui.ollama.models import Registry
from h2q_tui.ollama.server import Server


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """``root/tiny`` (step 5, served), ``root/other`` (step 9, for create and swap), a folder
    outside the roots and a link inside them that points there."""
    root = tmp_path_factory.mktemp("manage")
    make_run(root / "served", "tiny", steps=(5,))
    make_run(root / "spare", "other", steps=(9,))
    outside = make_run(root / "outside", "away", steps=(3,))
    (root / "spare" / "escape").symlink_to(outside)
    (root / "spare" / "loop").symlink_to(root / "spare" / "loop")
    return root


def serving(root: Path, file: Path | None, allow: tuple[Path, ...] = ()) -> Server:
    """``serve root/served/tiny --allow-root ... --registry FILE`` as serve's main sets it up."""
    tiny = root / "served" / "tiny"
    registry = Registry.discover([tiny])
    registry_file.attach(registry, registry_file.Roots.of([tiny], allow), file)
    return Server(registry)


def names(client: ollama.Client) -> list[str]:
    return [m.model for m in client.list().models]


# ----------------------------------------------------------------------------- create, copy, delete
def test_create_copy_delete_through_the_official_client_survive_a_restart(root, tmp_path) -> None:
    file = tmp_path / "names.json"
    with LiveServer(serving(root, file, (root / "spare",)).app) as live:
        client = ollama.Client(host=live.url)
        made = client.create(
            "story:v1",
            from_=str(root / "spare" / "other"),
            system="Be brief.",
            parameters={"num_predict": 5, "seed": 3, "stop": ["\n"]},
        )
        assert made.status == "success"
        steps = [p.status for p in client.create("short", from_="tiny", stream=True)]
        assert steps[0] == "reading model metadata" and steps[-1] == "success"
        assert client.copy("story:v1", "story:v2").status == "success"
        assert client.delete("story:v1").status == "success"
        assert names(client) == ["tiny:latest", "short:latest", "story:v2"]
        shown = client.show("story:v2")
        assert shown.modelinfo["h2q.step"] == 9
        raw = httpx.post(f"{live.url}/api/show", json={"model": "story:v2"}).json()
        assert raw["system"] == "Be brief."
        assert "num_predict 5\nnum_ctx" in shown.parameters and 'stop "\\n"' in shown.parameters
        assert 'SYSTEM """Be brief."""' in shown.modelfile and "PARAMETER seed 3" in shown.modelfile
        assert client.show("short").modelinfo["h2q.step"] == 5
        # replacing a name, as Ollama does: the same name, another checkpoint
        client.create("short", from_="story:v2", parameters={"num_predict": 2})
        assert client.show("short").modelinfo["h2q.step"] == 9
    stored = json.loads(file.read_text())["models"]
    assert set(stored) == {"short:latest", "story:v2"}  # the command line's tiny is not kept
    assert stored["story:v2"] == {
        "from": str((root / "spare" / "other").resolve()),
        "system": "Be brief.",
        "parameters": {"num_predict": 5, "seed": 3, "stop": ["\n"]},
    }
    # made from a served name: its defaults, then the new ones
    assert stored["short:latest"]["parameters"] == {"num_predict": 2, "seed": 3, "stop": ["\n"]}
    restarted = serving(root, file, (root / "spare",))
    assert restarted.registry.warnings == []
    with LiveServer(restarted.app) as live:
        client = ollama.Client(host=live.url)
        assert names(client) == ["tiny:latest", "short:latest", "story:v2"]
        assert client.show("story:v2").modelinfo["h2q.step"] == 9
    entry = restarted.registry.get("story:v2")
    assert entry.system == "Be brief." and entry.default_options["num_predict"] == 5


def test_a_registry_file_inside_the_served_folder_keeps_relative_paths(root, tmp_path) -> None:
    run = make_run(tmp_path, "near", steps=(2,))
    registry = Registry.discover([run])
    file = registry_file.default_path([run / "checkpoints"])  # RUN/checkpoints: the run
    assert file == run / registry_file.FILE_NAME
    registry_file.attach(registry, registry_file.Roots.of([run]), file)
    with LiveServer(Server(registry).app) as live:
        ollama.Client(host=live.url).create("near:copy", from_=str(run / "checkpoints"))
    assert json.loads(file.read_text())["models"]["near:copy"] == {"from": "."}


def test_a_created_name_generates_with_its_defaults(root) -> None:
    with LiveServer(serving(root, None).app) as live:
        client = ollama.Client(host=live.url)
        client.create("short", from_="tiny", parameters={"num_predict": 4, "seed": 11})
        first = client.generate("short", "Once upon")
        assert first.eval_count == 4 and first.done_reason == "length"
        assert client.generate("short", "Once upon").response == first.response  # seeded
        assert client.generate("short", "Once upon", options={"num_predict": 6}).eval_count == 6
        client.create("kind", from_="tiny", system="Be kind.")
        reply = client.chat("kind", messages=[{"role": "user", "content": "Hi"}])
        assert reply.prompt_eval_count == len("Be kind.\n\nUser: Hi\nAssistant:")
        said = client.generate("kind", "Once", options={"num_predict": 1})
        assert said.prompt_eval_count == len("Be kind.\n\nOnce")
        own = client.generate("kind", "Once", system="No.", options={"num_predict": 1})
        assert own.prompt_eval_count == len("No.\n\nOnce")  # the request's own system wins


# ----------------------------------------------------------------------------- refusals
BAD = [
    ("POST", "/api/create", {"model": "x", "from": "../served/tiny"}, 400, "'..'"),
    ("POST", "/api/create", {"model": "x", "from": "/etc"}, 400, "outside the allowed roots"),
    ("POST", "/api/create", {"model": "x", "from": "SPARE/escape"}, 400, "outside the allowed"),
    ("POST", "/api/create", {"model": "x", "from": "SPARE/nothing"}, 404, "not found"),
    ("POST", "/api/create", {"model": "x", "from": "SPARE/loop"}, 400, "cannot be resolved"),
    ("POST", "/api/create", {"model": "x", "from": "SPARE/\u0000"}, 400, "null byte"),
    ("POST", "/api/create", {"model": "x", "from": "SPARE" + "/x" * 3000}, 400, "too long"),
    ("POST", "/api/create", {"model": "x", "from": "SPARE"}, 400, "not a checkpoint"),
    ("POST", "/api/create", {"model": "x", "from": "nope"}, 404, "model 'nope' not found"),
    ("POST", "/api/create", {"model": "x"}, 400, "from is required"),
    ("POST", "/api/create", {"from": "tiny"}, 400, "model is required"),
    ("POST", "/api/create", {"model": "../x", "from": "tiny"}, 400, "invalid model name"),
    ("POST", "/api/create", {"model": "x", "from": "tiny", "quantize": "q8_0"}, 400, "crystal"),
    ("POST", "/api/create", {"model": "x", "files": {"a.gguf": "sha256:0"}}, 400, "files are"),
    ("POST", "/api/create", {"model": "x", "from": "tiny", "template": "{{ .P }}"}, 400, "fixed"),
    ("POST", "/api/create", {"model": "x", "from": "tiny", "parameters": [1]}, 400, "object"),
    (
        "POST",
        "/api/create",
        {"model": "x", "from": "tiny", "parameters": {"top_k": "a"}},
        400,
        "'top_k' must be an integer",
    ),
    (
        "POST",
        "/api/create",
        {"model": "x", "from": "tiny", "parameters": {"temperature": -1}},
        400,
        "temperature",
    ),
    ("POST", "/api/create", {"model": "x", "from": "tiny", "system": 5}, 400, "system must be"),
    ("POST", "/api/create", b"{not json", 400, "invalid JSON"),
    ("POST", "/api/copy", {"source": "nope", "destination": "x"}, 404, "model 'nope' not found"),
    ("POST", "/api/copy", {"source": "tiny", "destination": "a/b"}, 400, "destination"),
    ("POST", "/api/copy", {"destination": "x"}, 400, "source is required"),
    ("DELETE", "/api/delete", {"model": "nope"}, 404, "model 'nope' not found"),
    ("DELETE", "/api/delete", {"model": "../tiny"}, 400, "invalid model name"),
    ("DELETE", "/api/delete", None, 400, "missing request body"),
    ("POST", "/api/delete", {"model": "tiny"}, 405, "method not allowed"),
    ("POST", "/api/swap", {"model": "nope", "from": "tiny"}, 404, "model 'nope' not found"),
    ("POST", "/api/swap", {"model": "tiny", "from": "/etc"}, 400, "outside the allowed roots"),
    ("POST", "/api/swap", {"model": "tiny", "from": "SPARE"}, 400, "not a checkpoint"),
    ("POST", "/api/swap", {"model": "tiny"}, 400, "from is required"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    BAD,
    ids=[f"{m} {p} {str(b)[:50]}" for m, p, b, _, _ in BAD],
)
async def test_bad_management_requests_are_one_line(root, method, path, body, status, words):
    server = serving(root, None, (root / "spare",))
    transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=False)
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace("SPARE", str(root / "spare")))
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        content = body if isinstance(body, bytes) else None
        payload = body if isinstance(body, dict) else None
        response = await http.request(method, path, content=content, json=payload)
        error = response.json()["error"]
        assert response.status_code == status, error
        assert words in error and "\n" not in error
        assert list(server.registry.entries) == ["tiny:latest"]  # nothing changed
        shown = await http.post("/api/show", json={"model": "tiny"})
        assert shown.status_code == 200  # still serving


def test_the_official_client_raises_on_refusals(root) -> None:
    with LiveServer(serving(root, None).app) as live:
        client = ollama.Client(host=live.url)
        for call, status in (
            (lambda: client.create("x", from_="tiny", quantize="q4_K_M"), 400),
            (lambda: client.create("x", from_="/etc"), 400),
            (lambda: client.copy("nope", "x"), 404),
            (lambda: client.delete("nope"), 404),
        ):
            with pytest.raises(ollama.ResponseError) as raised:
                call()
            assert raised.value.status_code == status and "\n" not in raised.value.error


# ----------------------------------------------------------------------------- the registry file
def test_hostile_entries_are_one_warning_left_out_and_kept_in_the_file(root, tmp_path) -> None:
    file = tmp_path / "names.json"
    good = {"from": str(root / "spare" / "other")}
    hostile = {
        "good:latest": good,
        "outside:latest": {"from": str(root / "outside" / "away")},
        "dots:latest": {"from": str(root / "spare" / ".." / "outside" / "away")},
        "link:latest": {"from": str(root / "spare" / "escape")},
        "../up:latest": good,
        "tiny:latest": good,  # the command line's name wins
        "gone:latest": {"from": str(root / "spare" / "gone")},
        "opts:latest": {**good, "parameters": {"temperature": "hot"}},
        "nofrom:latest": {"system": "x"},
        "listed:latest": [1, 2],
    }
    file.write_text(json.dumps({"version": 1, "models": hostile}))
    server = serving(root, file, (root / "spare",))
    assert list(server.registry.entries) == ["tiny:latest", "good:latest"]
    (warning,) = server.registry.warnings
    assert "9 name(s) left out" in warning and "\n" not in warning
    assert "outside the allowed roots" in warning and "'..'" in warning
    with LiveServer(server.app) as live:
        ollama.Client(host=live.url).create("new", from_="good")
    kept = json.loads(file.read_text())["models"]
    assert set(kept) == set(hostile) | {"new:latest"}  # left out, not lost


@pytest.mark.parametrize(
    "text",
    ["{broken", "[]", '{"version": 7, "models": {}}', '{"version": 1, "models": []}', "1" * 99],
)
def test_a_corrupt_file_is_one_warning_and_left_alone(root, tmp_path, text) -> None:
    file = tmp_path / "names.json"
    file.write_text(text)
    server = serving(root, file)
    (warning,) = server.registry.warnings
    assert "names made through the API last until serve stops" in warning
    assert server.registry.names.path is None
    with LiveServer(server.app) as live:
        client = ollama.Client(host=live.url)
        client.create("mine", from_="tiny")
        assert "mine:latest" in names(client)
    assert file.read_text() == text


def test_a_read_only_folder_keeps_names_in_memory(root, tmp_path, monkeypatch, capsys) -> None:
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: mode != os.W_OK and real_access(path, mode)
    )
    server = serving(root, tmp_path / "names.json")
    (warning,) = server.registry.warnings
    assert "not writable" in warning and server.registry.names.path is None
    monkeypatch.undo()
    # a write that fails later (a full disk): one warning, the name kept in memory
    server = serving(root, tmp_path / "names.json")

    def refuse(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_file, "write_text_atomic", refuse)
    with LiveServer(server.app) as live:
        client = ollama.Client(host=live.url)
        client.create("a", from_="tiny")
        client.create("b", from_="tiny")
        assert names(client) == ["tiny:latest", "a:latest", "b:latest"]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "No space left" in err
    assert not (tmp_path / "names.json").exists()


# ----------------------------------------------------------------------------- in use
def start_stream(url: str, model: str, body: dict, lines: list) -> threading.Thread:
    """A streamed generate on a thread of its own; its NDJSON objects go to ``lines``."""

    def run() -> None:
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=30) as response:
            lines.extend(json.loads(line) for line in response.iter_lines())

    thread = threading.Thread(target=run, name="test-stream")
    thread.start()
    return thread


def test_delete_while_streaming_lets_the_stream_finish(root) -> None:
    server = serving(root, None)
    body = {"model": "tiny", "prompt": "Once", "options": {"num_predict": 20, "seed": 1}}
    with LiveServer(server.app) as live:
        client = ollama.Client(host=live.url)
        client.generate("tiny")  # loaded
        entry = server.registry.get("tiny:latest")
        lines: list = []
        with hooked(entry.model, delay_s=0.02):
            stream = start_stream(live.url, "tiny", body, lines)
            wait_for(lambda: server.jobs, "the generation")
            assert client.delete("tiny").status == "success"
            assert names(client) == []
            stream.join(30)
        assert lines[-1]["done"] and lines[-1]["eval_count"] == 20
        with pytest.raises(ollama.ResponseError) as raised:
            client.generate("tiny", "Once")
        assert raised.value.status_code == 404


def test_swap_during_a_stream(root, tmp_path) -> None:
    file = tmp_path / "names.json"
    server = serving(root, file, (root / "spare",))
    body = {"model": "tiny", "prompt": "Once", "options": {"num_predict": 20, "seed": 1}}
    with LiveServer(server.app) as live:
        client = ollama.Client(host=live.url)
        old = client.generate("tiny", "Once", options=body["options"]).response
        entry = server.registry.get("tiny:latest")
        lines: list = []
        with hooked(entry.model, delay_s=0.02):
            stream = start_stream(live.url, "tiny", body, lines)
            wait_for(lambda: server.jobs, "the generation")
            swapped = httpx.post(
                f"{live.url}/api/swap",
                json={"model": "tiny", "from": str(root / "spare" / "other")},
                timeout=30,
            )
            stream.join(30)
        reply = swapped.json()
        assert swapped.status_code == 200 and reply["step"] == 9 and reply["previous_step"] == 5
        assert reply["from"].endswith("step_00000009") and reply["model"] == "tiny:latest"
        for key in ("load_duration", "wait_duration", "total_duration"):
            assert type(reply[key]) is int and 0 <= reply[key] <= reply["total_duration"]
        # the request in flight finished on the old weights; the next one has the new
        assert lines[-1]["done"] and "".join(line["response"] for line in lines) == old
        assert client.show("tiny").modelinfo["h2q.step"] == 9
        assert client.generate("tiny", "Once", options=body["options"]).response != old
        assert server.registry.get("tiny:latest") is entry and not entry.follow
        # a stored name's swap is kept in the registry file; a command-line name's is not
        client.create("story", from_="tiny")
        httpx.post(f"{live.url}/api/swap", json={"model": "story", "from": "tiny"}, timeout=30)
    stored = json.loads(file.read_text())["models"]
    assert set(stored) == {"story:latest"}
    assert stored["story:latest"]["from"] == str((root / "spare" / "other").resolve())


# ----------------------------------------------------------------------------- the command
def test_serve_flags(root, tmp_path, capsys, monkeypatch) -> None:
    import uvicorn

    tiny = str(root / "served" / "tiny")
    assert cli.main(["serve", tiny, "--allow-root", str(tmp_path / "no")]) == 2
    assert "--allow-root" in capsys.readouterr().err
    assert cli.main(["serve", tiny, "--registry", str(tmp_path / "no" / "x.json")]) == 2
    assert "--registry: folder" in capsys.readouterr().err
    file = tmp_path / "names.json"
    spare = str(root / "spare" / "other")
    file.write_text(json.dumps({"version": 1, "models": {"kept:latest": {"from": spare}}}))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    argv = ["serve", tiny, "--port", "0", "--registry", str(file)]
    assert cli.main([*argv, "--allow-root", str(root / "spare")]) == 0
    out, err = capsys.readouterr()
    assert "kept:latest" in out and f"names made through the API: {file}" in out and not err
    assert cli.main(argv) == 0  # without the root: left out, one warning
    out, err = capsys.readouterr()
    assert "kept:latest" not in out and err.count("\n") == 1 and "outside the allowed" in err
