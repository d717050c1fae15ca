"""Our kernels folder can neither shadow nor be shadowed by PyPI's ``kernels`` package,
and the engine never imports the UI libraries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, extra_path: Path | None = None, cwd: Path = REPO) -> str:
    env_path = f"import sys; sys.path.append({str(extra_path)!r});" if extra_path else ""
    result = subprocess.run(
        [sys.executable, "-c", env_path + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip()


def _fake_pypi_kernels(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("ORIGIN = 'pypi'\n")
    return site


def test_pypi_kernels_is_not_shadowed_even_from_the_repo_root(tmp_path):
    """A regular package named kernels wins over our folder, even with the repo first on sys.path."""
    site = _fake_pypi_kernels(tmp_path)
    out = _python(
        """
        import sys; sys.path.insert(0, '')
        import kernels, h2q_kernels.hamiltonian
        print(kernels.ORIGIN, h2q_kernels.hamiltonian.__file__)
    """,
        extra_path=site,
    )
    origin, ours = out.split()
    assert origin == "pypi"
    assert Path(ours).is_relative_to(REPO / "kernels")


def test_our_kernels_are_not_shadowed_by_pypi_kernels(tmp_path):
    """Even when PyPI's kernels comes first on sys.path, the model uses our kernels."""
    site = _fake_pypi_kernels(tmp_path)
    out = _python(
        f"""
        import sys; sys.path.insert(0, {str(site)!r})
        from h2q_tui.models.microstream import HamLinear
        import kernels
        print(kernels.ORIGIN, sys.modules[HamLinear.__module__].__file__)
    """,
        cwd=tmp_path,
    )
    origin, ours = out.split()
    assert origin == "pypi"
    assert Path(ours).is_relative_to(REPO / "kernels" / "h2q_kernels")


def test_wheel_installs_no_top_level_kernels_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "kernels" not in packages and "kernels/h2q_kernels" in packages
    assert not (
        REPO / "kernels" / "__init__.py"
    ).exists()  # a namespace folder never beats a package


def test_engine_does_not_import_ui_libraries():
    out = _python("""
        import sys
        import h2q_tui.training.trainer, h2q_tui.training.writers, h2q_tui.training.session
        import h2q_tui.models, h2q_tui.data.sources, h2q_tui.data.download, h2q_kernels.hamiltonian
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))
    """)
    assert out == "[]"


def test_checkpoint_readers_do_not_import_training():
    """Generation, crystallization and checkpoint I/O sit below training (issue 12, item 6)."""
    out = _python("""
        import sys
        import h2q_tui.checkpoints, h2q_tui.generation.generate, h2q_tui.generation.steer_eval
        import h2q_tui.crystal.crystallize, h2q_tui.crystal.measure, h2q_tui.codecs.stored
        from h2q_tui import checkpoints
        checkpoints.read_info  # the public API is importable from the package
        print(sorted(m for m in sys.modules if m.startswith(('h2q_tui.training', 'h2q_tui.app'))))
    """)
    assert out == "[]"


def test_help_loads_neither_torch_nor_the_dashboard():
    """``--help``, and the subcommands that import torch only once their flags are read, stay
    fast: the imports written inside functions for start-up time keep doing their job."""
    out = _python("""
        import contextlib, io, sys
        from h2q_tui.cli.main import main
        for name in ('', 'attach', 'export', 'hotstart', 'presets', 'serve', 'web'):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main([name, '--help'] if name else ['--help'])
        heavy = {'torch', 'textual', 'requests', 'uvicorn'}
        print(sorted({m.split('.')[0] for m in sys.modules} & heavy))
    """)
    assert out == "[]"
