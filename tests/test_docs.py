"""The README opens with the two commands, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_starts_with_make_run_and_make_test():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    block = lines[lines.index("```sh") + 1 :]
    commands = [line.split("#")[0].strip() for line in block[: block.index("```")]]
    assert commands == ["make run", "make test"]
    assert lines.index("```sh") < 4  # right under the title


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+ (.*)$", text, re.M)
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: broken link {link}"
        if anchor:
            assert anchor in _anchors(path), f"{doc.name}: no heading for {link}"


@pytest.mark.parametrize("doc", DOCS[1:], ids=lambda p: p.name)
def test_every_docs_page_names_the_machine_of_its_figures(doc: Path):
    text = doc.read_text(encoding="utf-8")
    tables = text.count("\n|---")
    assert tables, f"{doc.name} has no tables"
    assert text.count("Machine:") >= 1, f"{doc.name} does not say which machine measured it"
    assert any(cpu in text for cpu in ("Intel", "AMD EPYC")), f"{doc.name} names no CPU"
