"""README.md and docs/ stay true: every command shown names a real subcommand and flags its
parser accepts, every relative link resolves, every table of figures names its machine, and
the README stays short enough to read in five minutes."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from h2q_tui.cli.main import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
TOPICS = [  # one page per topic (issue: README and docs)
    "dashboard", "training", "data", "generation", "crystallize", "gguf", "hotstart", "serve", "openai", "track", "web",
    "torchrun", "performance", "results", "run-files", "development", "history",
]  # fmt: skip
PLACEHOLDER_FLAGS = {"--help", "--version"}


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def _prose(doc: Path) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"```.*?```", "", _text(doc), flags=re.S)


# ---------------------------------------------------------------- the README's shape


def test_readme_starts_with_make_run_and_make_test():
    lines = _text(README).splitlines()
    block = lines[lines.index("```sh") + 1 :]
    commands = [line.split("#")[0].strip() for line in block[: block.index("```")]]
    assert commands == ["make run", "make test"]
    assert lines.index("```sh") < 4  # right under the title


def test_readme_is_short():
    lines = len(_text(README).splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/"


def test_every_topic_has_its_page_and_the_readme_links_it():
    links = set(re.findall(r"\]\(docs/([\w-]+)\.md", _text(README)))
    for topic in TOPICS:
        assert (REPO / "docs" / f"{topic}.md").is_file(), f"docs/{topic}.md is missing"
        assert topic in links, f"README.md does not link docs/{topic}.md"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_session_numbers(doc: Path):
    """Figures are dated and name their machine; the work's history is not the reader's."""
    found = re.findall(r"\bsession\s*\d+|\bSession\b", _text(doc), flags=re.I)
    assert not found, f"{doc.name}: {found}"


def test_readme_key_line_names_all_five_panes():
    keys = [line for line in _text(README).splitlines() if "`1`" in line and "`5`" in line]
    assert keys, "README.md has no key line naming the panes 1-5"
    for pane in ("ICU", "System", "Generate", "Crystal", "Ollama"):
        assert pane in keys[0], f"the key line does not name the {pane} pane"


def test_readme_eval_example_reads_a_file_a_fresh_clone_has():
    """eval's --data is a file: the shared corpora beside the clone, never a made-up name."""
    evals = [c for c in _commands(README, inline=False) if c[1:2] == ["eval"]]
    assert evals, "README.md shows no eval example"
    for words in evals:
        data = words[words.index("--data") + 1]
        assert data.startswith("../shared/data/"), f"eval example reads {data}"
        shared = REPO.parent / "shared" / "data" / Path(data).name
        if shared.parent.is_dir():
            assert shared.is_file(), f"{data} is not in ../shared/data"


# ---------------------------------------------------------------- links


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+ (.*)$", _prose(path), re.M)
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path):
    for link in re.findall(r"\]\(([^)\s]+)\)", _prose(doc)):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: broken link {link}"
        if anchor:
            assert anchor in _anchors(path), f"{doc.name}: no heading for {link}"


# ---------------------------------------------------------------- figures name their machine


def _figure_sections(doc: Path):
    """(heading, text) for every section holding a table with numbers in its rows; the text
    includes the sections it sits in (a ``###`` under a ``##`` that names the machine)."""
    sections = re.split(r"^(#+ .*)$", _prose(doc), flags=re.M)
    open_bodies: dict[int, str] = {}  # heading level -> body of the open section
    for heading, body in zip(["# (top)", *sections[1::2]], sections[0::2], strict=True):
        level = len(heading) - len(heading.lstrip("#"))
        open_bodies = {k: v for k, v in open_bodies.items() if k < level} | {level: body}
        for table in re.findall(r"(?:^\|.*\n)+", body, flags=re.M):
            rows = table.splitlines()[2:]  # header and |---| line left out
            if any(re.search(r"\|\s*[*+−-]*\d", row) for row in rows):
                yield heading, "".join(open_bodies.values())
                break


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_table_of_figures_names_its_machine(doc: Path):
    for heading, body in _figure_sections(doc):
        if "same on every machine" in body:
            continue  # counts (parameters), not measurements
        assert "Machine:" in body, f"{doc.name}, {heading}: a table of figures without 'Machine:'"
        assert re.search(r"Intel|AMD EPYC|GPU", body), f"{doc.name}, {heading}: no CPU named"


# ---------------------------------------------------------------- commands shown


def _shown_lines(doc: Path, inline: bool = True) -> list[str]:
    """Command lines in sh blocks (continuations joined, comments cut) and, with ``inline``,
    code spans that start with a command."""
    text = _text(doc)
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#(?!\S*['\"]).*$", "", line).strip()  # a comment, not a quoted '#'
            if line and not line.startswith("#"):
                lines.append(line)
    if inline:
        lines += re.findall(r"`((?:h2q-tui|python|torchrun|make)\b[^`]*)`", _prose(doc))
    return lines


def _split(line: str) -> list[str]:
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # optional parts are shown as [--flag N]
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _commands(doc: Path, inline: bool = True) -> list[list[str]]:
    """Every ``h2q-tui ...`` shown, as words, with ``torchrun -m h2q_tui`` and
    ``python -m h2q_tui`` read as h2q-tui; one line's ``&&``/``&``/``|``-joined parts apart."""
    found = []
    for line in _shown_lines(doc, inline):
        for part in re.split(r"\s(?:&&|&|;)\s?|\s&$", line):
            words = _split(part)
            if "-m" in words and "h2q_tui" in words:
                words = ["h2q-tui", *words[words.index("h2q_tui") + 1 :]]
            if words[:1] == ["h2q-tui"]:
                found.append(words)
    return found


@cache
def _help(*argv: str) -> str:
    """What ``h2q-tui ARGV --help`` prints, run in this process (nothing trains)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


@cache
def _subcommands() -> set[str]:
    listed = _help().split("subcommands", 1)[1]
    return set(re.findall(r"^  ([a-z][a-z-]+)\b", listed, flags=re.M))


def _parser_of(words: list[str]) -> tuple[str, ...]:
    """The argv prefix whose --help lists the flags of this command."""
    if len(words) < 2 or words[1].startswith("-") or words[1] not in _subcommands():
        return ()
    if words[1] == "ollama" and len(words) > 2 and words[2] in ("list", "pull", "generate"):
        return ("ollama", words[2])
    return (words[1],)


def test_help_lists_the_subcommands():
    assert {"eval", "generate", "serve", "ollama", "web", "torchrun"} <= _subcommands()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_shown_names_a_real_subcommand(doc: Path):
    for words in _commands(doc):
        if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]+", words[1]):
            looks_like_path = "/" in words[1] or words[1] in ("SUBCOMMAND",)
            assert looks_like_path or words[1] in _subcommands(), (
                f"{doc.name}: `{' '.join(words)}`: no subcommand {words[1]!r} in h2q-tui --help"
            )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_flag_shown_is_accepted_by_its_parser(doc: Path):
    for words in _commands(doc):
        prefix = _parser_of(words)
        if words[1:2] == ["torchrun"]:  # torch's launcher flags, then -m h2q_tui's
            continue
        if words[1:2] == ["ollama"] and not prefix[1:]:  # `ollama list|pull|generate`
            accepted = "".join(_help("ollama", sub) for sub in ("list", "pull", "generate"))
        else:
            accepted = _help(*prefix)
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(words)):
            if flag not in PLACEHOLDER_FLAGS:
                assert re.search(rf"{flag}\b(?!-)", accepted), (
                    f"{doc.name}: `{' '.join(words)}`: h2q-tui {' '.join(prefix)} has no {flag}"
                )


def test_readme_commands_table_is_the_help_list():
    table = _text(README).split("## Commands", 1)[1].split("\n## ", 1)[0]
    shown = set(re.findall(r"^\| `h2q-tui ([a-z][a-z-]+)", table, flags=re.M))
    assert shown == _subcommands(), f"table {sorted(shown)} != --help {sorted(_subcommands())}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_other_commands_shown_exist(doc: Path):
    """``make TARGET`` is a Makefile target; ``python benchmarks/X.py --flag`` a script that
    takes that flag; ``python tests/X.py`` a file."""
    targets = set(re.findall(r"^([a-z-]+):", _text(REPO / "Makefile"), flags=re.M))
    for line in _shown_lines(doc):
        words = _split(line)
        if words[:1] == ["make"] and len(words) > 1:
            assert words[1] in targets, f"{doc.name}: `{line}`: no make target {words[1]}"
        script = next(
            (w for w in words if re.fullmatch(r"(benchmarks|tests)/\w+\.(py|sh)", w)), None
        )
        if words[:1] in (["python"], ["bash"]) and script:
            path = REPO / script
            assert path.is_file(), f"{doc.name}: `{line}`: no {script}"
            source = path.read_text(encoding="utf-8")
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line[line.index(script) :]):
                assert flag in source or flag in PLACEHOLDER_FLAGS, (
                    f"{doc.name}: `{line}`: {script} has no {flag}"
                )


# ---------------------------------------------------------------- the quick start, run


@pytest.mark.slow
def test_readme_quick_start_runs_on_a_fresh_folder(tmp_path: Path):
    """The quick start's commands, in order, in an empty folder beside ../shared/data; the
    training budgets shrink to a few steps of the tiny preset (the commands stay as shown)."""
    from run_cli import h2q

    shared = REPO.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip(f"{shared} is missing")
    clone = tmp_path / "clone"
    clone.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared)
    for words in _commands(README, inline=False):
        if words[1:2] == ["attach"]:
            continue  # the dashboard needs a terminal; tests/test_app.py covers attach
        args = []
        for word in words[1:]:
            if args[-1:] == ["--max-seconds"]:  # 300 s -> 3 steps, 600 s -> 6 (resumed)
                args[-1:] = ["--max-steps", str(int(word) // 100)]
                continue
            args.append(word)
        if "--no-ui" in args and "--resume" not in args:
            args += ["--preset", "tiny"]
        if args[:1] == ["generate"]:
            args += ["--max-new-tokens", "8"]
        if args[:1] == ["eval"]:
            args += ["--windows", "16"]
        done = h2q(*args, cwd=clone)
        assert done.returncode == 0, f"h2q-tui {' '.join(args)}: {done.stderr[-2000:]}"
