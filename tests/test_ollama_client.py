"""The bridge (h2q_tui/ollama/client.py): OLLAMA_HOST as the official client reads it, the
probe, list, pull, streamed generate/chat with stats, cancel by closing — against our own
``serve`` (no real Ollama server can be installed here) and against a small fake server that
sends the edge cases: an error line mid-stream, a final object without counts, a slow first
byte, a stream cut before done, a server that is not Ollama, a refused connection."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from ollama._client import _parse_host as official_parse_host
from ollama_helpers import LiveServer, free_port, hooked, make_run, wait_for
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from h2q_tui.cli import main as cli
from h2q_tui.ollama import protocol
from h2q_tui.ollama.client import (
    ModelNotFound,
    OllamaClient,
    Result,
    ServerError,
    ServerUnreachable,
)
from h2q_tui.ollama.models import Registry
from h2q_tui.ollama.replies import ModelInfo, Reply
from h2q_tui.ollama.server import Server

HOSTS = [
    None,
    "",
    "1.2.3.4",
    ":56789",
    "1.2.3.4:56789",
    "http://1.2.3.4",
    "https://1.2.3.4",
    "https://1.2.3.4:56789",
    "example.com",
    "example.com:56789",
    "http://example.com",
    "https://example.com:56789",
    "example.com/",
    "example.com/path",
    "example.com:56789/path/",
    "https://example.com:56789/path",
    "[0001:002:003:0004::1]",
    "[0001:002:003:0004::1]:56789",
    "http://[0001:002:003:0004::1]",
    "https://[0001:002:003:0004::1]:56789/path",
    "[0001:002:003:0004::1]:56789/path/",
    "0.0.0.0",
    "localhost:11500",
    "  127.0.0.1:8080 ",
]


@pytest.mark.parametrize("host", HOSTS)
def test_ollama_host_is_read_as_the_official_client_reads_it(host) -> None:
    expected = official_parse_host(host.strip() if host else host)
    assert protocol.parse_host(host) == expected


def test_the_client_reads_ollama_host(monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ":56789")
    assert OllamaClient().base_url == "http://127.0.0.1:56789"
    monkeypatch.delenv("OLLAMA_HOST")
    assert OllamaClient().base_url == "http://127.0.0.1:11434"


def test_tokens_per_s_comes_from_the_final_object_only() -> None:
    def result(final: dict) -> Result:
        return Result(final=Reply.from_json(final, chat=False))

    assert result({"done": True, "eval_count": 50, "eval_duration": 250_000_000}).tokens_per_s == (
        pytest.approx(200.0)
    )
    missing = result({"done": True})  # counts missing: tolerated
    assert missing.tokens_per_s is None and missing.load_s is None
    assert "tokens/s n/a" in missing.stats_line() and "hot start n/a" in missing.stats_line()
    wrong = result({"done": True, "eval_count": "many", "eval_duration": -1}).final
    assert wrong.eval_count is None and wrong.eval_duration is None


# ----------------------------------------------------------------------------- refused
def test_a_refused_connection_reads_no_server_never_model_not_found() -> None:
    url = f"127.0.0.1:{free_port()}"
    with OllamaClient(url) as client:
        with pytest.raises(ServerUnreachable, match="no Ollama server at http://127.0.0.1:"):
            client.probe()
        for call in (client.list, lambda: client.generate("x", "hi").run()):
            with pytest.raises(ServerUnreachable) as raised:
                call()
            assert "not found" not in str(raised.value)


def test_the_command_says_no_server_in_one_line(capsys, monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    assert cli.main(["ollama", "generate", "tiny", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ollama server at" in err


# ----------------------------------------------------------------------------- our serve
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("bridge"), "tiny")
    server = Server(Registry.discover([run]))
    with LiveServer(server.app) as live:
        yield server, live.url


def test_list_pull_generate_and_chat_against_serve(served) -> None:
    server, url = served
    with OllamaClient(url) as client:
        assert client.probe()
        (model,) = client.list()
        assert model.name == "tiny:latest"
        progress = list(client.pull("tiny"))
        assert progress[-1].status == "success" and "100.0%" in progress[1].line()
        with pytest.raises(ModelNotFound, match="nothing to pull"):
            list(client.pull("nope"))
        options = {"num_predict": 16, "seed": 3}
        stream = client.generate("tiny", "Once", options, keep_alive="5m")
        pieces = list(stream)
        result = stream.result
        final = result.final
        assert "".join(pieces) == result.text and result.done and final.done_reason == "length"
        assert final.eval_count == 16 and result.tokens_per_s == pytest.approx(
            16 / final.eval_duration * 1e9
        )
        assert final.load_duration is not None and result.first_token_s is not None
        assert result.first_token_s <= result.wall_s
        chat = client.chat("tiny", [{"role": "user", "content": "Hi"}], options).run()
        assert chat.done and chat.final.eval_count is not None and chat.final.eval_count <= 16
        with pytest.raises(ModelNotFound, match="model 'nope' not found"):
            client.generate("nope", "x").run()


def test_cancel_closes_the_stream_and_ends_the_servers_generation(served) -> None:
    server, url = served
    with OllamaClient(url) as client:
        client.generate("tiny", "").run()  # load
        model = server.registry.get("tiny:latest").model
        with hooked(model, delay_s=0.005):
            stream = client.generate("tiny", "Once", {"num_predict": 4000})
            got = []
            for piece in stream:
                got.append(piece)
                if len(got) == 3:
                    jobs = list(server.jobs)
                    threading.Thread(target=stream.cancel).start()  # from another thread
            assert stream.result.cancelled and not stream.result.done
            (job,) = jobs
            wait_for(lambda: not job.thread.is_alive(), "the server's generation to end", 5)
    assert job.generation.stats.new_tokens < 1000


def test_the_ollama_command_lists_and_streams(served, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", served[1])
    assert cli.main(["ollama", "list"]) == 0
    assert "tiny:latest" in capsys.readouterr().out
    assert cli.main(["ollama", "generate", "tiny", "--prompt", "Once", "--num-predict", "8"]) == 0
    captured = capsys.readouterr()
    assert "8 tokens" in captured.err and "tokens/s" in captured.err and "hot start" in captured.err
    assert cli.main(["ollama", "pull", "tiny"]) == 0
    assert "success" in capsys.readouterr().err
    assert cli.main(["ollama", "generate", "nope", "--prompt", "x"]) == 2
    assert "model 'nope' not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a fake server
def fake_app() -> Starlette:
    """An Ollama look-alike whose model names choose an edge case."""

    async def version(request):
        return JSONResponse({"version": "0.0.0-fake"})

    async def generate(request):
        body = await request.json()
        name = body["model"]

        async def lines():
            if name == "slow":
                await asyncio.sleep(1.0)  # the first byte comes late
            yield b'{"response": "Hel", "done": false}\n'
            yield b"\n"  # a blank line is skipped
            yield b'{"response": "lo", "done": false}\n'
            if name == "midstream":
                yield b'{"error": "the model crashed"}\n'
                return
            if name == "cut":
                return
            if name == "nocounts":
                yield b'{"response": "", "done": true}\n'
                return
            final = {
                "response": "",
                "done": True,
                "done_reason": "stop",
                "eval_count": 2,
                "eval_duration": 4_000_000,
                "load_duration": 1_000,
            }
            yield (json.dumps(final) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def pull(request):
        async def lines():
            yield b'{"status": "pulling manifest"}\n'
            for done in (0, 50, 100):
                yield (
                    json.dumps(
                        {
                            "status": "downloading",
                            "digest": "sha256:ab",
                            "total": 100,
                            "completed": done,
                        }
                    )
                    + "\n"
                ).encode()
            yield b'{"status": "success"}\n'

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return Starlette(
        routes=[
            Route("/api/version", version),
            Route("/api/generate", generate, methods=["POST"]),
            Route("/api/pull", pull, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def fake():
    with LiveServer(fake_app()) as live:
        yield live.url


def test_an_error_line_mid_stream_raises_after_the_text_so_far(fake) -> None:
    with OllamaClient(fake) as client:
        stream = client.generate("midstream", "x")
        got = []
        with pytest.raises(ServerError, match="the model crashed"):
            for piece in stream:
                got.append(piece)
    assert got == ["Hel", "lo"] and not stream.result.done


def test_a_final_object_without_counts_is_tolerated(fake) -> None:
    with OllamaClient(fake) as client:
        result = client.generate("nocounts", "x").run()
    assert result.done and result.text == "Hello" and result.final.eval_count is None
    assert result.tokens_per_s is None and "2 tokens" in result.stats_line()


def test_a_slow_first_byte_is_waited_for_and_timed(fake) -> None:
    with OllamaClient(fake) as client:
        result = client.generate("slow", "x").run()
    assert result.text == "Hello" and result.first_token_s >= 1.0
    assert result.tokens_per_s == pytest.approx(500.0) and result.load_s == pytest.approx(1e-6)


def test_a_stream_cut_before_done_is_an_error(fake) -> None:
    with OllamaClient(fake) as client, pytest.raises(ServerError, match="without a final"):
        client.generate("cut", "x").run()


def test_pull_streams_progress(fake) -> None:
    with OllamaClient(fake) as client:
        lines = [p.line() for p in client.pull("anything")]
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert "50.0% of 100 bytes" in lines[2]


def test_a_server_that_is_not_ollama_reads_no_server() -> None:
    async def index(request):
        return PlainTextResponse("hello", status_code=404)

    app = Starlette(routes=[Route("/{path:path}", index)])
    with LiveServer(app) as live, OllamaClient(live.url) as client:
        with pytest.raises(ServerUnreachable, match="without a version"):
            client.probe()


# ----------------------------------------------------------------------------- tables
LONG = "hf.co/someone/a-really-long-model-name-GGUF:Q4_K_M-imatrix"


class _ListingClient:
    """OllamaClient's stand-in for ``ollama list``: names of every length."""

    def __init__(self, host) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def probe(self) -> None:
        pass

    def list(self) -> list[ModelInfo]:
        details = {"family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_K_M"}
        return [
            ModelInfo("tiny:latest", size=1234, details=details),
            ModelInfo(LONG, size=4_900_000_000, details=details),
        ]


def test_ollama_list_keeps_its_columns_aligned_with_long_names(capsys, monkeypatch) -> None:
    from h2q_tui.cli import ollama as command

    monkeypatch.setattr(command, "OllamaClient", _ListingClient)
    assert cli.main(["ollama", "list"]) == 0
    header, short, long = capsys.readouterr().out.splitlines()
    assert long.startswith(LONG + "  ")
    end = header.index("PARAMS") + len("PARAMS")  # numbers: aligned right
    assert short.index("8.0B") + 4 == long.index("8.0B") + 4 == end
    assert header.index("FAMILY") == short.index("llama") == long.index("llama")
    assert header.index("QUANT") == short.index("Q4_K_M") == long.rindex("Q4_K_M")


def test_serve_rows_line_up_with_long_names() -> None:
    from h2q_tui.cli.columns import aligned

    lines = aligned([["tiny", "microstream", "step 40"], [LONG, "gpt", "step 7"]])
    assert lines[0].index("microstream") == lines[1].index("gpt") == len(LONG) + 2
    assert lines[0].index("step 40") == lines[1].index("step 7")
