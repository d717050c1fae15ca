"""``h2q-tui hotstart CHECKPOINT``: the flags, the printed table and ``--json`` of
:func:`h2q_tui.hotstart.measure.measure`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from h2q_tui.cli.parser import Parser
from h2q_tui.errors import UserError
from h2q_tui.generation.text import DEFAULT_PROMPT
from h2q_tui.hotstart.measure import COLUMNS, OVERLAPPED_ORDER, PHASE_ORDER, Request, measure
from h2q_tui.system.files import write_text_atomic


def main(argv: list[str]) -> int:
    """``h2q-tui hotstart``: parse the flags, measure, print the table (and write --json)."""
    parser = Parser(
        prog="h2q-tui hotstart",
        description="Time loading a checkpoint up to its first generated token, by phase: "
        "in fresh processes (as a user starts generate), in this process (what the Generate "
        "pane and serve pay) and the naive pickle path as the anchor; median and range over "
        "--repeats, warm (file in the page cache) or --cold.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder, model.safetensors or run dir")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every figure")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="drop the file's pages from the page cache before every repeat (checked with "
        "mincore; impossible on tmpfs)",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue")
    parser.add_argument("--json", metavar="PATH", help="write every figure here as JSON")
    parser.add_argument(
        "--in-process-only", action="store_true", help="skip the fresh-process figures"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive anchor")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for decoding, as generate"
    )
    args = parser.parse_args(argv)
    columns = tuple(
        key
        for key, _, fresh, method in COLUMNS
        if not (fresh and args.in_process_only) and not (method == "naive" and args.no_naive)
    )
    request = Request(
        checkpoint=args.checkpoint,
        repeats=args.repeats,
        cold=args.cold,
        prompt=args.prompt,
        json=args.json,
        columns=columns,
        threads=args.threads,
    )
    report = measure(request)
    print(format_report(report))
    if request.json:
        write_json(report, request.json)
        print(f"wrote {request.json}")
    return 0


def _cell(summary: dict[str, float] | None, scale: float = 1000.0, digits: int = 1) -> str:
    if summary is None:
        return "—"
    median, low, high = (scale * summary[k] for k in ("median", "min", "max"))
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def format_report(report: dict[str, object]) -> str:
    """The readable table: one row per phase, one column per way of loading."""
    columns = report["columns"]
    headings = [column["heading"] for column in columns.values()]
    rows: list[list[str]] = []
    for name in PHASE_ORDER:
        if not any(name in column["phases"] for column in columns.values()):
            continue
        rows.append(
            [f"{name}", *(_cell(column["phases"].get(name)) for column in columns.values())]
        )
    rows.append(["total → first token", *(_cell(c["total_s"]) for c in columns.values())])
    for name in OVERLAPPED_ORDER:
        if any(name in column.get("overlapped", {}) for column in columns.values()):
            rows.append(
                [
                    f"{name} (overlapped)",
                    *(_cell(c.get("overlapped", {}).get(name)) for c in columns.values()),
                ]
            )
    rows.append(
        [
            f"tokens/s ({report['rate_tokens']} tokens)",
            *(_cell(c["tokens_per_s"], 1.0) for c in columns.values()),
        ]
    )
    label_width = max(len(row[0]) for row in rows)
    widths = [
        max(len(headings[i]), *(len(row[i + 1]) for row in rows)) for i in range(len(headings))
    ]
    lines = [
        f"hotstart {report['checkpoint']}",
        f"  {report['what']} · {report['file_bytes'] / 1e6:.1f} MB",
        f"  machine: {report['machine_line']}",
        f"  cache: {report['cache']}",
        f"  median (min–max) of {report['repeats']} repeat(s), ms; {report['threads']} "
        "decoding thread(s) in every column"
        + (f" ({report['threads_reason']})" if report.get("threads_reason") else ""),
        "",
        "  ".join(
            [" " * label_width, *(h.rjust(w) for h, w in zip(headings, widths, strict=True))]
        ),
    ]
    for row in rows:
        cells = (cell.rjust(w) for cell, w in zip(row[1:], widths, strict=True))
        lines.append("  ".join([row[0].ljust(label_width), *cells]))
    if any(column.get("overlapped") for column in columns.values()):
        lines.append(
            "verify (overlapped): the checksum pass over every tensor, on a thread of its own "
            "beside read, build, assign and the first forward (not in the total, which "
            "includes verify_wait: the wait for it before the first token is handed over)"
        )
    if report.get("cold_unavailable"):
        lines.append(f"cold unavailable ({report['cold_unavailable']})")
    return "\n".join(lines)


def write_json(report: dict[str, object], path: str | Path) -> None:
    try:
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write --json {path}: {exc.strerror or exc}") from None


def run_as_script(argv: list[str]) -> int:
    """``python -m h2q_tui.cli.hotstart``: :func:`main` with the CLI's error handling."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"h2q-tui: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_as_script(sys.argv[1:]))
