"""``h2q-tui attach RUN_DIR...``: the dashboard on runs other processes are writing;
``h2q-tui attach runs/`` (a folder of run dirs) first lists them to pick from."""

from __future__ import annotations

from pathlib import Path

from h2q_tui.cli.parser import Parser
from h2q_tui.errors import UserError
from h2q_tui.track import tensorboard
from h2q_tui.training.run_list import is_runs_folder
from h2q_tui.training.tail import not_regular
from h2q_tui.training.writers import METRICS_FILE


def main(argv: list[str]) -> int:
    parser = Parser(
        prog="h2q-tui attach",
        description="The dashboard on runs other processes are writing. A folder of run dirs "
        "(e.g. runs/) opens the run browser: type to filter, space selects, Enter opens them.",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        help="run dirs holding metrics.jsonl, TensorBoard logdirs (events.out.tfevents.*), "
        "or one folder of run dirs",
    )
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"run dir not found: {run_dir}")
        if tensorboard.is_logdir(run_dir):
            missing = tensorboard.missing_extra(run_dir)
            if missing:
                raise UserError(missing)
            continue
        problem = not_regular(run_dir / METRICS_FILE)  # a FIFO or a device: never read
        if problem:
            raise UserError(f"{problem}: attach reads only a regular file")
    browse = is_runs_folder(args.run_dirs[0]) if len(args.run_dirs) == 1 else False
    for run_dir in args.run_dirs if not browse else ():
        if is_runs_folder(run_dir):
            raise UserError(
                f"{run_dir} is a folder of runs, not a run: attach it alone to pick from it"
            )
    # the dashboard (textual, torch) loads once the run dirs are known to be readable
    from h2q_tui.app import make_app, run_app
    from h2q_tui.app.signals import end_with_web_parent

    end_with_web_parent()  # a web tab's process: it ends with its server
    if browse:
        return run_app(make_app(browse=args.run_dirs[0]))
    return run_app(make_app(attach=args.run_dirs))  # non-zero if the app crashed
