"""Start the real dashboard in a pseudo-terminal, and check that a process and all its children
are gone and a run dir's lock is free."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
from run_cli import ENV

TERMINAL_ENV = {**ENV, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}


class Terminal:
    """A pty whose slave is the child's stdin/stdout/stderr and, with ``controlling``, its
    controlling terminal (as in tmux or ssh: closing the master then sends SIGHUP)."""

    def __init__(self, args: list[str], cwd: Path, controlling: bool = True) -> None:
        self.master, slave = os.openpty()
        os.set_blocking(self.master, False)

        def session() -> None:  # runs in the child between fork and exec
            os.setsid()
            if controlling:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=TERMINAL_ENV,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=session,
        )
        os.close(slave)
        self.screen = b""

    def drain(self) -> None:
        if self.master < 0:
            return
        try:
            while chunk := os.read(self.master, 65536):
                self.screen = (self.screen + chunk)[-200_000:]
        except OSError:
            pass

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        """Close the terminal, as tmux kill-session or a closed window does."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def wait_for_steps(self, metrics: Path, steps: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not (metrics.is_file() and metrics.read_text().count('"event":"step"') >= steps):
            assert self.proc.poll() is None, f"the dashboard ended early: {self.screen[-3000:]!r}"
            assert time.monotonic() < deadline, "the dashboard did not train"
            self.drain()
            time.sleep(0.2)

    def wait_exit(self, seconds: float) -> int | None:
        """The exit code, or None if it still runs after ``seconds`` (then it is killed)."""
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.drain()
            time.sleep(0.1)
        return self.proc.poll()

    def kill(self) -> None:
        kill_tree(self.proc.pid)
        self.close()


def family(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that still exist (zombies excluded)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    alive = []
    for member in members:
        try:
            if member.status() != psutil.STATUS_ZOMBIE:
                alive.append(member)
        except psutil.NoSuchProcess:
            pass
    return alive


def kill_tree(pid: int) -> None:
    for member in family(pid):
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass


def all_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of ``processes`` still alive after ``seconds`` (killed then): [] is success."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for process in alive:
        process.kill()
    return alive


def lock_is_free(run_dir: Path) -> bool:
    fd = os.open(run_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def last_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
