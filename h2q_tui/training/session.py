"""Everything between command-line flags and a ready Trainer: config, data, run dir, resume.

The one way to prepare and start a run: the headless runner and the dashboard both call
``prepare_run`` then ``PreparedRun.trainer``, so both write the same files and train alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from h2q_tui import checkpoints
from h2q_tui import config as cfg
from h2q_tui.checkpoints import run_lock
from h2q_tui.data.sources import Corpus, load_corpus
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.errors import UserError
from h2q_tui.models import memory
from h2q_tui.system import hardware
from h2q_tui.system.alerting import AlertTargets
from h2q_tui.training.alerts import Alerts
from h2q_tui.training.distributed import SINGLE, World
from h2q_tui.training.run_files import (
    ensure_writable,
    read_run_file,
    refuse_inside_a_run,
    resume_source,
    set_aside_later_steps,
    write_run_file,
)
from h2q_tui.training.trainer import Emit, Trainer

DEFAULT_PRESET = "microstream-cpu"


@dataclass
class RunRequest:
    """The training flags common to ``--no-ui`` and the dashboard."""

    preset: str | None = None
    data: str | None = None
    heldout: str | None = None
    overrides: list[str] = field(default_factory=list)
    run_dir: str | None = None
    resume: str | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    seed: int | None = None
    tokenizer: str | None = None
    device: str = "auto"
    memory_budget: str | None = None  # --memory-budget: train.memory_budget
    vram_budget: str | None = None  # --vram-budget: train.vram_budget
    on_alarm: str | None = None  # --on-alarm: a command run on each alarm
    alarm_webhook: str | None = None  # --alarm-webhook: a URL each alarm is posted to


@dataclass
class PreparedRun:
    """A run ready to train: its config, data, run dir (locked) and what it resumes from."""

    config: cfg.RunConfig
    corpus: Corpus
    run_dir: Path
    preset: str
    resume_from: checkpoints.CheckpointInfo | None
    tokenizer: BpeTokenizer | None = None
    device: str = "auto"
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr or the log
    alerts: AlertTargets | None = None  # where alarms go (rank 0 only; never saved: secrets)

    def trainer(
        self,
        emit: Emit,
        *,
        commands: queue.Queue | None = None,
        pause_on_nan: bool = False,
        world: World = SINGLE,
    ) -> Trainer:
        """This run's Trainer, reporting every event through ``emit``.

        The options are where the dashboard and the headless runner differ: the dashboard
        sends ``commands`` (its keys) and pauses on a NaN or above the memory budget
        (``pause_on_nan``) because a person is there to resume; only the headless runner
        trains as one rank of a torchrun job (``world``).
        Alarms also go to ``alerts``, when set, through an :class:`Alerts` in front of ``emit``.
        """
        if self.alerts is not None:
            emit = Alerts(self.alerts, self.run_dir, emit)
        return Trainer(
            self.config,
            self.corpus,
            self.run_dir,
            emit,
            commands,
            preset=self.preset,
            resume_from=self.resume_from,
            pause_on_nan=pause_on_nan,
            tokenizer=self.tokenizer,
            device=self.device,
            world=world,
        )


def load_tokenizer(path: str | None, config: cfg.RunConfig) -> BpeTokenizer | None:
    """The BPE tokenizer named by --tokenizer, checked against model.vocab_size."""
    if path is None:
        if config.model.vocab_size < 256:
            raise UserError(
                f"model.vocab_size={config.model.vocab_size} is too small for a byte model: "
                "bytes need 256 (pass --set model.vocab_size=256, or --tokenizer for BPE)"
            )
        return None
    tokenizer = BpeTokenizer(path)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(
            f"tokenizer {path} has {tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; pass --set model.vocab_size={tokenizer.vocab_size}"
        )
    return tokenizer


def _flag_overrides(request: RunRequest) -> list[str]:
    for flag, value in (("--max-steps", request.max_steps), ("--max-seconds", request.max_seconds)):
        if value is not None and value < 0:  # "no limit" is train.max_*=-1, never the flag
            key = flag[2:].replace("-", "_")
            raise UserError(f"{flag} must be >= 0, got {value} (no limit: --set train.{key}=-1)")
    flags = [
        f"train.max_steps={request.max_steps}" if request.max_steps is not None else None,
        f"train.max_seconds={float(request.max_seconds)}"
        if request.max_seconds is not None
        else None,
        f"train.seed={request.seed}" if request.seed is not None else None,
        *(
            f"train.{key}={json.dumps(value)}"  # a TOML string, however the size is written
            for key, value in (
                ("memory_budget", request.memory_budget),
                ("vram_budget", request.vram_budget),
            )
            if value is not None
        ),
    ]
    return request.overrides + [f for f in flags if f]


def check_corpus_size(config: cfg.RunConfig, corpus: Corpus) -> None:
    """Enough training bytes for one batch and held-out bytes for one window, or a UserError."""
    m, t = config.model, config.train
    need = t.batch_size * (m.context + 1) if t.loop == "horizon" else m.context + 2
    if corpus.train.numel() < need:
        raise UserError(
            f"training data {corpus.train_source} has {corpus.train.numel():,} bytes; "
            f"one batch of the {t.loop} loop needs at least {need:,}: give more data"
        )
    if corpus.heldout.numel() < m.context + 1:
        raise UserError(
            f"held-out data ({corpus.heldout_source}) has {corpus.heldout.numel():,} bytes; "
            f"one model.context window needs {m.context + 1}: give a longer --heldout or more data"
        )


def fingerprint(corpus: Corpus) -> str:
    return hashlib.sha256(corpus.train.numpy().tobytes()).hexdigest()


def prepare_run(
    request: RunRequest,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    writes: bool = True,
) -> PreparedRun:
    """Resolve a new or resumed run; raises UserError for any bad input before training starts.

    The run dir is locked for this process; a refused request gives back a lock it took.
    ``writes=False`` (the other ranks of a torchrun job, after rank 0 prepared the same
    request with its run dir filled in): read config, data and checkpoint only — no lock, no
    run.json, nothing moved or removed.
    """
    held_before = run_lock.held()
    created: list[Path] = []  # folders this request made, outermost first
    targets = AlertTargets.parse(request.on_alarm, request.alarm_webhook) if writes else None
    try:
        prepared = _prepare(request, progress, writes, created)
        prepared.alerts = targets
        return prepared
    except BaseException:
        for run_dir in run_lock.held() - held_before:
            run_lock.release(run_dir, remove=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty: never removes what others wrote
        raise


def _prepare(
    request: RunRequest, progress, writes: bool = True, created: list[Path] | None = None
) -> PreparedRun:
    hardware.resolve_device(request.device)  # a bad --device fails before any data is read
    if request.resume:
        return _prepare_resume(request, progress, writes)
    preset = request.preset or DEFAULT_PRESET
    config = cfg.resolve(preset, _flag_overrides(request))
    tokenizer = load_tokenizer(request.tokenizer, config)
    memory.check_training_memory(config, hardware.resolve_device(request.device))
    corpus = load_corpus(
        request.data, request.heldout, config.eval.heldout_fraction, progress, tokenizer
    )
    check_corpus_size(config, corpus)
    run_dir = Path(
        request.run_dir or Path("runs") / f"{Path(preset).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    if not writes:
        return PreparedRun(config, corpus, run_dir, preset, None, tokenizer, request.device)
    refuse_inside_a_run(run_dir)
    ensure_writable(run_dir, created)
    run_lock.acquire(run_dir)
    if (run_dir / "checkpoints").exists():
        raise UserError(
            f"run dir {run_dir} already holds a run; use --resume {run_dir} or another --run-dir"
        )
    write_run_file(
        run_dir,
        {
            "preset": preset,
            "data": request.data,
            "heldout": request.heldout,
            "train_sha256": fingerprint(corpus),
            "tokenizer": str(Path(request.tokenizer).resolve()) if request.tokenizer else None,
        },
    )
    warnings = leakage_warnings(request.data, request.heldout)
    return PreparedRun(
        config, corpus, run_dir, preset, None, tokenizer, request.device, warnings=warnings
    )


def _prepare_resume(request: RunRequest, progress, writes: bool = True) -> PreparedRun:
    run_dir, source = resume_source(request.resume)  # type: ignore[arg-type]
    target = Path(request.run_dir) if request.run_dir else run_dir
    if target.is_dir() and writes:
        run_lock.acquire(target)
    info = checkpoints.read_info(source, need_state=True)
    if request.preset:
        raise UserError("--preset cannot change on --resume (the checkpoint holds the config)")
    stored = cfg.saved_limits(info.config.to_dict(), info.step)
    data = cfg.apply_overrides(stored, _flag_overrides(request))
    config = cfg.from_dict(data, source=f"--resume {run_dir}")
    cfg.validate(config)
    if dataclasses.replace(config.model) != info.config.model:
        raise UserError("model.* keys cannot change on --resume")
    if config.train.loop != info.config.train.loop:
        raise UserError(
            f"train.loop cannot change on --resume (the data position saved is the "
            f"{info.config.train.loop} loop's)"
        )
    saved = read_run_file(run_dir)
    tokenizer = load_tokenizer(request.tokenizer or saved.get("tokenizer"), config)
    memory.check_training_memory(config, hardware.resolve_device(request.device))
    corpus = load_corpus(
        request.data or saved.get("data"),
        request.heldout or saved.get("heldout"),
        config.eval.heldout_fraction,
        progress,
        tokenizer,
    )
    if saved.get("train_sha256") and saved["train_sha256"] != fingerprint(corpus):
        raise UserError(
            f"training data differs from the data of run {run_dir}; resume needs the same --data"
        )
    check_corpus_size(config, corpus)
    if not writes:
        return PreparedRun(
            config, corpus, target, saved.get("preset", ""), info, tokenizer, request.device
        )
    ensure_writable(target)
    run_lock.acquire(target)
    checkpoints.remove_leftovers(target / "checkpoints", owner=True)
    if target == run_dir and source != run_dir:
        aside = set_aside_later_steps(run_dir, info.step)
        if aside:
            info = dataclasses.replace(info, note="; ".join(n for n in (info.note, aside) if n))
    warnings = leakage_warnings(
        request.data or saved.get("data"), request.heldout or saved.get("heldout")
    )
    return PreparedRun(
        config,
        corpus,
        target,
        saved.get("preset", ""),
        info,
        tokenizer,
        request.device,
        warnings=warnings,
    )


def leakage_warnings(data: str | None, heldout: str | None) -> list[str]:
    """A warning when the held-out file is the training file (or inside its directory)."""
    if not data or not heldout:
        return []
    train, held = Path(data), Path(heldout)
    try:
        if train.is_file() and held.is_file() and os.path.samefile(train, held):
            return [
                "--heldout is the training file: the held-out loss measures memorisation, "
                "not generalisation"
            ]
        if train.is_dir() and held.is_file() and held.resolve().is_relative_to(train.resolve()):
            return [
                f"--heldout is inside the training directory {train}: the held-out loss "
                "measures memorisation, not generalisation"
            ]
    except OSError:
        return []
    return []
