"""The floors hold: imports point down, no cycles, modules and functions stay short.

The rules and the graph are in ``tests/floors.py`` (``python tests/floors.py`` prints the report).
Each exception below carries its reason; an exception that no longer happens fails too, so the
lists only shrink.
"""

from __future__ import annotations

import floors

# "source -> target" imports allowed to point up or sideways, with the reason.
UPWARD_EXCEPTIONS: dict[str, str] = {}

# Groups of modules that import each other (sorted, joined by " <-> ").
CYCLE_EXCEPTIONS: set[str] = set()

# Modules allowed over floors.MAX_MODULE_LINES lines, with the reason.
LONG_MODULES: dict[str, str] = {}

# Functions allowed over floors.MAX_FUNCTION_LINES lines ("module:function"), with the reason.
LONG_FUNCTIONS: dict[str, str] = {}

# Modules (or packages: every module under them) whose imports inside functions may go
# without a comment saying why, with the reason.
UNEXPLAINED_IMPORTS: dict[str, str] = {}


def test_every_package_has_a_floor():
    units = {floors.unit_of(name) for name in floors.modules()}
    assert units <= set(floors.FLOOR_OF), (
        f"place these in tests/floors.py FLOORS: {units - set(floors.FLOOR_OF)}"
    )


def test_imports_point_down():
    upward = {f"{i.source} -> {i.target}" for i in floors.all_imports() if floors.is_upward(i)}
    assert upward - set(UPWARD_EXCEPTIONS) == set(), "imports that point up or sideways"
    assert set(UPWARD_EXCEPTIONS) - upward == set(), "exceptions that no longer happen: remove them"


def test_no_import_cycles():
    found = {" <-> ".join(group) for group in floors.cycles(floors.all_imports())}
    assert found - CYCLE_EXCEPTIONS == set(), "new import cycles"
    assert CYCLE_EXCEPTIONS - found == set(), "cycles that are gone: remove them from the list"


def test_modules_are_short():
    long = {n for n, s in floors.module_lines().items() if s > floors.MAX_MODULE_LINES}
    assert long - set(LONG_MODULES) == set(), f"modules over {floors.MAX_MODULE_LINES} lines"
    assert set(LONG_MODULES) - long == set(), "modules now short enough: remove them from the list"


def test_functions_are_short():
    long = set(floors.long_functions())
    assert long - set(LONG_FUNCTIONS) == set(), f"functions over {floors.MAX_FUNCTION_LINES} lines"
    assert set(LONG_FUNCTIONS) - long == set(), "functions now short enough: remove them"


def _excused(module: str) -> str | None:
    """The UNEXPLAINED_IMPORTS key that covers ``module`` (None when none does)."""
    return next((k for k in UNEXPLAINED_IMPORTS if module == k or module.startswith(k + ".")), None)


def test_imports_inside_functions_say_why():
    """An import inside a function saves start-up time (or it belongs at the top), and a
    comment on it, or just above its run of imports, says what it saves (any package)."""
    found = floors.unexplained_function_imports()
    bare = [f"{i.source}:{i.line} -> {i.target}" for i in found if _excused(i.source) is None]
    assert bare == [], "imports inside functions without a comment saying why"
    used = {_excused(i.source) for i in found}
    assert set(UNEXPLAINED_IMPORTS) - used == set(), "exceptions that no longer happen: remove them"


def test_an_unexplained_import_is_caught(tmp_path, monkeypatch):
    """Only the import inside a function with no comment on it or above its run is reported."""
    pkg = tmp_path / "h2q_tui"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "units.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "cli" / "a.py").write_text(
        "from h2q_tui import units\n"  # at the top: nothing to explain
        "def f():\n"
        "    x = 1\n"
        "    from h2q_tui import errors\n"  # the violations: lines 4 and 5
        "    import json\n"
        "def g():\n"
        "    # lazy: why, for the run below\n"
        "    from h2q_tui import errors\n"
        "    from h2q_tui import units\n"
        "def h():\n"
        "    from h2q_tui import errors  # lazy: why\n"
        "    if True:\n"
        "        from h2q_tui import units  # lazy: why\n"
    )
    monkeypatch.setattr(floors, "PACKAGE_ROOT", pkg)
    found = floors.unexplained_function_imports()
    assert [f"{i.source}:{i.line} -> {i.target}" for i in found] == [
        "h2q_tui.cli.a:4 -> h2q_tui",
        "h2q_tui.cli.a:5 -> json",
    ]


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """An upward import and a cycle written into a scratch package are both found."""
    pkg = tmp_path / "h2q_tui"
    (pkg / "models").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from h2q_tui.cli import b\n")
    (pkg / "cli" / "b.py").write_text("def f():\n    from h2q_tui.models import a\n")
    monkeypatch.setattr(floors, "PACKAGE_ROOT", pkg)
    imports = floors.all_imports()
    assert [f"{i.source} -> {i.target}" for i in imports if floors.is_upward(i)] == [
        "h2q_tui.models.a -> h2q_tui.cli.b"
    ]
    assert floors.cycles(imports) == [["h2q_tui.cli.b", "h2q_tui.models.a"]]
