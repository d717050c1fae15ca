"""The package's floors: which h2q_tui package may import which, read from the code's own imports.

Run ``python tests/floors.py`` for the report (upward imports, cycles, module and function sizes);
``tests/test_floors.py`` holds the same rules in ``make test``.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "h2q_tui"

# Top to bottom. A unit may import itself and any unit on a lower floor, never one on its own
# floor or above. Units on one floor are siblings that do not know each other.
FLOORS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli",),
    ("app",),
    ("track",),  # the public logging API and the TensorBoard reader: training's records
    ("ollama", "hotstart", "crystal", "export", "training"),
    ("generation",),
    ("checkpoints",),
    ("codecs",),
    ("models",),
    ("data", "config"),
    ("system",),
    ("units", "errors", "__init__"),
]
FLOOR_OF = {unit: level for level, units in enumerate(FLOORS) for unit in units}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    """One ``import`` of an h2q_tui module by another, where it is written."""

    source: str  # dotted module that imports, e.g. h2q_tui.cli.main.train
    target: str  # dotted module imported, e.g. h2q_tui.training.session
    line: int
    in_function: bool

    @property
    def source_unit(self) -> str:
        return unit_of(self.source)

    @property
    def target_unit(self) -> str:
        return unit_of(self.target)


def unit_of(module: str) -> str:
    """``h2q_tui.app.panes.icu`` -> ``app``; ``h2q_tui.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve_relative(source: str, is_package: bool, level: int, name: str | None) -> str:
    base = source.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every h2q_tui import in one file, each resolved to the deepest module that exists."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    function_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    function_lines.add(inner.lineno)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if candidate in known else base)
        for target in sorted(set(targets)):
            if target == "h2q_tui" or target.startswith("h2q_tui."):
                found.append(Import(module, target, node.lineno, node.lineno in function_lines))
    return found


def all_imports() -> list[Import]:
    mods = modules()
    known = set(mods)
    return [imp for name, path in mods.items() for imp in imports_of(name, path, known)]


def _comment_lines(source: str) -> tuple[set[int], set[int]]:
    """(lines holding a comment, lines holding nothing but a comment) of one file."""
    anywhere: set[int] = set()
    alone: set[int] = set()
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            anywhere.add(row)
            if not lines[row - 1][:col].strip():
                alone.add(row)
    return anywhere, alone


def _unexplained_import_lines(source: str) -> set[int]:
    """Lines of import statements with no comment saying why they are where they are.

    A comment on an import's own line explains it; a comment on the line just above a run of
    consecutive import statements, or on the run's first line, explains the whole run.
    """
    anywhere, alone = _comment_lines(source)
    unexplained: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            run_explained = False
            previous_was_import = False
            for statement in statements:
                is_import = isinstance(statement, (ast.Import, ast.ImportFrom))
                if is_import and not previous_was_import:
                    first = statement.lineno
                    run_explained = first - 1 in alone or first in anywhere
                if is_import and not run_explained and statement.lineno not in anywhere:
                    unexplained.add(statement.lineno)
                previous_was_import = is_import
    return unexplained


def _named(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> str:
    """The module an import statement names, relative ones resolved."""
    if isinstance(node, ast.Import):
        return ", ".join(alias.name for alias in node.names)
    if node.level:
        return _resolve_relative(module, path.name == "__init__.py", node.level, node.module)
    return node.module or ""


def unexplained_function_imports() -> list[Import]:
    """Imports (of any package) written inside functions without a comment saying why: an
    import belongs at the top of its module unless loading it later saves start-up time.

    ``target`` is the module the statement names (``from h2q_tui import units`` -> h2q_tui).
    """
    found: set[Import] = set()
    for name, path in modules().items():
        source = path.read_text(encoding="utf-8")
        unexplained = _unexplained_import_lines(source)
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno in unexplained:
                    found.add(Import(name, _named(node, name, path), node.lineno, True))
    return sorted(found, key=lambda i: (i.source, i.line))


def is_upward(imp: Import) -> bool:
    """True when an import reaches a unit on its own floor (a sibling) or above."""
    src, dst = imp.source_unit, imp.target_unit
    if src == dst or dst == "__init__" and imp.target == "h2q_tui":
        return False
    if src not in FLOOR_OF or dst not in FLOOR_OF:
        return True  # a unit nobody placed is a finding in itself
    return FLOOR_OF[dst] <= FLOOR_OF[src]


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected module groups of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def module_lines() -> dict[str, int]:
    return {name: len(path.read_text().splitlines()) for name, path in modules().items()}


def long_functions() -> dict[str, int]:
    """``module:function`` -> lines, for every function (methods included) over the limit."""
    found: dict[str, int] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{name}:{node.name}"] = length
    return found


def report() -> str:
    imports = all_imports()
    upward = [imp for imp in imports if is_upward(imp)]
    lines = [
        f"internal imports: {len(imports)} ({sum(i.in_function for i in imports)} inside functions)",
        f"imports of any package inside functions without a comment saying why: "
        f"{len(unexplained_function_imports())}",
        f"upward or sideways imports: {len(upward)}",
    ]
    lines += [
        f"  {i.source}:{i.line} -> {i.target}{'  (in a function)' if i.in_function else ''}"
        for i in upward
    ]
    found_cycles = cycles(imports)
    lines.append(f"import cycles: {len(found_cycles)}")
    lines += ["  " + " <-> ".join(group) for group in found_cycles]
    sizes = module_lines()
    big = sorted(((n, s) for n, s in sizes.items() if s > MAX_MODULE_LINES), key=lambda x: -x[1])
    lines.append(
        f"modules: {len(sizes)}, {sum(sizes.values())} lines; over {MAX_MODULE_LINES}: {len(big)}"
    )
    lines += [f"  {s:5d} {n}" for n, s in big]
    funcs = sorted(long_functions().items(), key=lambda x: -x[1])
    lines.append(f"functions over {MAX_FUNCTION_LINES} lines: {len(funcs)}")
    lines += [f"  {s:5d} {n}" for n, s in funcs]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
