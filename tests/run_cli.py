"""Run the ``h2q-tui`` command as a user would: a subprocess, one torch thread, text output;
or the same entry point in this process, where the subprocess is not what a test checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def h2q(
    *args: str, cwd: Path, timeout: int = 300, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "h2q_tui", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        input=stdin,
    )


def h2q_in_process(
    *args: str, cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``h2q_tui.cli.main`` called in this process (no torch import in a fresh interpreter,
    ~3 s of CPU each), its stdout/stderr and exit code captured as :func:`h2q`'s would be.

    One torch thread, as the subprocess's OMP_NUM_THREADS=1; an exception escaping ``main``
    fails the test, as a traceback would; SystemExit gives its code, as the interpreter does.
    """
    import contextlib
    import io

    import torch

    from h2q_tui.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    previous_dir, previous_threads = os.getcwd(), torch.get_num_threads()
    previous_stdin = sys.stdin
    torch.set_num_threads(1)
    try:
        os.chdir(cwd)
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    except SystemExit as exc:  # --help and --version end so; the interpreter's exit status
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = previous_stdin
        os.chdir(previous_dir)
        torch.set_num_threads(previous_threads)
    return subprocess.CompletedProcess(["h2q-tui", *args], code, out.getvalue(), err.getvalue())
