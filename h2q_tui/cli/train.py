"""Training from the command line: headless (``--no-ui``, also under torchrun) or in the dashboard.

Stop signals finish a headless run like Ctrl-C: checkpoint, ``run_finished`` with the reason,
then exit 128 + the signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys

from h2q_tui.cli.progress import download_progress
from h2q_tui.errors import UserError
from h2q_tui.system.stop_signals import BY_REASON, BY_SIGNUM

EXIT_OK, EXIT_USAGE = 0, 2
EXIT_MEMORY = 3  # --no-ui stopped above --memory-budget / --vram-budget (checkpoint saved)


def run_headless(args: argparse.Namespace) -> int:
    # lazy (as in every function here): cli.main imports this module for --help; torch
    # and the trainer load when a run starts
    from h2q_tui.system import hardware
    from h2q_tui.training import distributed

    world = distributed.join(hardware.resolve_device(args.device))  # one process without torchrun
    try:
        code = _train_headless(args, world)
    except BaseException:
        world.close(wait=False)  # an error: leave at once (the others' collectives then fail)
        raise
    world.close(wait=code != EXIT_USAGE)  # an agreed end: wait for rank 0's last save first
    return code


def _prepare_on_every_rank(request, world):
    """Rank 0 prepares the run (lock, run.json, resume bookkeeping) and tells the others its
    run dir; they then read the same config, data and checkpoint without writing anything.
    None on a rank other than 0 when rank 0 refused the request (it says why)."""
    # lazy: torch loads when a run starts, not for --help
    from h2q_tui.checkpoints import run_lock
    from h2q_tui.training.session import prepare_run

    if world.is_main:
        try:
            prepared = prepare_run(request, progress=download_progress())
            try:
                world.check_batch(prepared.config.train.batch_size)
            except UserError:
                run_lock.release(prepared.run_dir)
                raise
        except UserError:
            world.share(None)
            raise
        world.share(str(prepared.run_dir))
        return prepared
    run_dir = world.share(None)
    if run_dir is None:
        return None
    return prepare_run(dataclasses.replace(request, run_dir=run_dir), writes=False)


def _train_headless(args: argparse.Namespace, world) -> int:
    # lazy: torch and the writers' config load when a run starts, not for --help
    from h2q_tui.system.monitor import DEFAULT_INTERVAL_S, SystemMonitor
    from h2q_tui.training.session import RunRequest
    from h2q_tui.training.system_log import SystemLog
    from h2q_tui.training.writers import ConsolePrinter, JsonlWriter

    request = RunRequest(**{k: getattr(args, k) for k in RunRequest.__dataclass_fields__})
    prepared = _prepare_on_every_rank(request, world)
    if prepared is None:
        return EXIT_USAGE
    for warning in prepared.warnings:  # e.g. --heldout is the training file
        print(f"h2q-tui: warning: {warning}", file=sys.stderr, flush=True)
    writer = JsonlWriter(prepared.run_dir) if world.is_main else None
    printer = ConsolePrinter(prepared.config.log.log_interval, prepared.config.train.max_steps)

    def emit(event) -> None:
        if writer is None:  # a rank other than 0: rank 0 logs the run
            return
        writer(event)
        try:
            printer(event)
        except OSError:  # the terminal is gone (SIGHUP, closed SSH): keep training and saving
            printer.stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run

    # rank 0 samples the machine on the monitor's own thread; its readings go in the log
    interval_s = prepared.config.log.system_interval_s
    sample_s = min(DEFAULT_INTERVAL_S, interval_s)  # a fresh snapshot for every event
    monitor = SystemMonitor(interval_s=sample_s) if writer is not None and interval_s > 0 else None
    latest = (lambda: monitor.latest) if monitor is not None else (lambda: None)
    trainer = prepared.trainer(SystemLog(emit, latest, interval_s), world=world)
    if monitor is not None:
        monitor.start()
    if world.is_main:
        print(f"run dir: {prepared.run_dir}", flush=True)
        if world.distributed:
            print(f"training on {world.describe()}; rank 0 writes the log", flush=True)
    with stop_signals_save(trainer, speak=world.is_main):
        try:
            reason = trainer.run()
        finally:
            if monitor is not None:
                monitor.stop()
            if writer is not None:
                writer.close()
    if reason in BY_REASON:  # 128 + the signal number
        return BY_REASON[reason].exit_code
    if reason == "memory":  # one line: what was over, where the checkpoint is, what to do
        print(f"h2q-tui: stopped: {trainer.budget_stop_message}", file=sys.stderr, flush=True)
        return EXIT_MEMORY
    return 1 if reason == "nan" else EXIT_OK


@contextlib.contextmanager
def stop_signals_save(trainer, speak: bool = True):
    """While training: SIGINT/SIGTERM/SIGHUP ask the trainer to stop after this step and save.

    The handler only sets a flag and, when ``speak`` (rank 0 of a torchrun job), writes one
    line with os.write (no locks, no buffered I/O); a second signal of any kind aborts at once.
    """

    def on_signal(signum, frame) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt  # a second signal: give up on saving
        stop = BY_SIGNUM[signal.Signals(signum)]
        trainer.stop_requested = stop.reason
        if not speak:
            return
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            os.write(
                2, f"\n{stop.name}: stopping after this step, then saving a checkpoint…\n".encode()
            )

    previous = {sig: signal.signal(sig, on_signal) for sig in BY_SIGNUM}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_dashboard(args: argparse.Namespace) -> int:
    # lazy: the dashboard (textual) and torch load when it starts, not for --help
    from h2q_tui.app import make_app, run_app
    from h2q_tui.app.engine_link import LiveEngine
    from h2q_tui.training.session import RunRequest, prepare_run

    request = RunRequest(**{k: getattr(args, k) for k in RunRequest.__dataclass_fields__})
    engine = LiveEngine(prepare_run(request, progress=download_progress()))
    try:
        return run_app(make_app(engine, autostart=args.autostart))  # non-zero if it crashed
    finally:
        engine.request_stop("stopped")  # an app that died mid-run: the trainer saves and ends
