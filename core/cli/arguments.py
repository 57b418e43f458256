"""The command line's arguments: every command, its options and their bounds, as argparse reads
them, and the exit codes `--help` lists."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from core.operations import recall
from core.operations.rollout import live as rollout_live
from core.operations.rollout import plan as rollout_plan
from core.store import rejections

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_SAVED = 0, 1, 2, 3
EXIT_CODES = """exit codes:
  0  done (generate: the program was served and saved to history)
  1  failed: no program (nothing cached or saved), or the database could not be used
  2  invalid input or configuration (the field or environment variable is named)
  3  generate only: the program was produced and printed, but not saved to history"""


class _Parser(argparse.ArgumentParser):
    """Refuses an argument in one line, as every error here is, and says where help is
    (argparse would print the usage first). Its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INVALID, f"error: {message} (see {self.prog} --help)\n")


def _bounded(kind: type[int] | type[float], least: int, most: int) -> Callable[[str], int | float]:
    """An argparse type: a number of `kind` from `least` to `most` (nan and inf are not)."""
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be a {noun} from {least} to {most}, not {text[:40]!r}")
        return value

    return parse


# Every interface, as Prometheus's exporters listen: the scraper runs on another host. The
# port is the one the Prometheus project's list of exporter ports leaves to OpenTelemetry's
# Prometheus exporter, the usual home of an application's own metrics.
METRICS_HOST = "0.0.0.0"


METRICS_PORT = 9464


def parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m core",
        description="Coach Cache: ADR-049 program cache",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser("migrate", help="apply database migrations, adopting existing tables")
    migrate.add_argument("--check", action="store_true", help="print the SQL it would run; change nothing")
    generate = commands.add_parser("generate", help="generate a program, through the cache")
    generate.add_argument("--user-id", required=True)
    generate.add_argument(
        "--profile", required=True, type=Path, help="onboarding responses, a JSON file ('-' for stdin)"
    )
    generate.add_argument("--paid", action="store_true", help="the user has paid access")
    generate.add_argument("--force-refresh", action="store_true", help="bypass the cache and regenerate")
    generate.add_argument(
        "--progress", action="store_true", help="say on stderr how far the LLM is while it writes the program"
    )
    commands.add_parser("cleanup", help="delete expired program entries")
    invalidate = commands.add_parser("invalidate", help="delete a user's, or a generator's, program entries")
    target = invalidate.add_mutually_exclusive_group(required=True)
    target.add_argument("--user-id", help="every cached program of this user")
    target.add_argument(
        "--generator", metavar="VERSION", help="every entry made by this generator_version (as generate prints it)"
    )
    reject = commands.add_parser(
        "reject", help="reject a program handed out; its cache entry is invalidated if it still holds it"
    )
    reject.add_argument("--program-id", required=True, help="the training_programs id, as generate prints it")
    reject.add_argument("--reason", required=True, choices=rejections.CATEGORIES)
    reject.add_argument("--note", help=f"why, in words (at most {rejections.NOTE_MAX_CHARS} characters)")
    _recall_parser(commands.add_parser("recall", help="list who was handed programs that got out wrong; recall them"))
    _rollout_parser(commands.add_parser("rollout", help="try a candidate model, or pre-warm the cache for it"))
    commands.add_parser("stats", help="cache entries, storage and hit rate")
    commands.add_parser("rollup", help="roll settled hours of requests into the monitoring rollup (for cron)")
    alert_steps = commands.add_parser("alerts", help="the alert rules").add_subparsers(dest="step", required=True)
    alert_steps.add_parser(
        "check", help="evaluate the alert rules; POST each that starts firing or resolves to ALERT_WEBHOOK_URL (cron)"
    )
    metrics = commands.add_parser(
        "metrics", help="serve the figures to Prometheus, read from the tables at each scrape"
    )
    metrics.add_argument("--host", default=METRICS_HOST, help=f"address to listen on (default {METRICS_HOST})")
    metrics.add_argument(
        "--port", type=_bounded(int, 1, 65535), default=METRICS_PORT, help=f"port (default {METRICS_PORT})"
    )
    metrics.add_argument(
        "--once", action="store_true", help="print one scrape on stdout and exit (for a textfile collector)"
    )
    return parser


def _time(text: str) -> datetime:
    """An argparse type: an ISO 8601 date or time, UTC unless it says otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 date or time (2026-12-07 or 2026-12-07T09:30Z), not {text[:40]!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _recall_parser(recall_command: argparse.ArgumentParser) -> None:
    chosen = recall_command.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--generator", metavar="VERSION", help="the programs this generator_version made")
    chosen.add_argument("--key", help="the programs handed out for this cache key")
    chosen.add_argument("--program-id", help="this program (a training_programs id) and every hand-out of it")
    recall_command.add_argument("--since", type=_time, help="handed out at or after this time (UTC unless given)")
    recall_command.add_argument("--until", type=_time, help="handed out before this time (UTC unless given)")
    recall_command.add_argument("--csv", type=Path, metavar="FILE", help="write the hand-outs to FILE as CSV")
    recall_command.add_argument(
        "--invalidate", action="store_true", help="delete the entries still holding them; mark them recalled"
    )
    recall_command.add_argument(
        "--reason", help=f"why they are recalled (with --invalidate; at most {recall.REASON_MAX_CHARS} characters)"
    )
    recall_command.add_argument(
        "--prewarm", action="store_true", help="with --invalidate: regenerate the recalled keys ahead, as a rollout"
    )
    recall_command.add_argument("--live", action="store_true", help="pre-warm through the chat endpoint, not a batch")


def _rollout_parser(rollout: argparse.ArgumentParser) -> None:
    steps = rollout.add_subparsers(dest="step", required=True)
    tried = steps.add_parser("try", help="generate live with the candidate for recent profiles; compare; cache nothing")
    tried.add_argument("--model", required=True)
    tried.add_argument(
        "--sample",
        type=_bounded(int, 1, rollout_live.MAX_SAMPLE),
        default=rollout_live.DEFAULT_SAMPLE,
        help="profiles to try",
    )
    bounds = rollout_plan.SELECTION_BOUNDS
    for name, says in (
        ("plan", "what a pre-warm for the candidate would regenerate, and its cost live and batched"),
        ("start", "pre-warm the cache for the candidate: submit a batch (or run it live)"),
    ):
        step = steps.add_parser(name, help=says)
        step.add_argument("--model", required=True)
        step.add_argument(
            "--requested-days",
            type=_bounded(float, *bounds["requested_days"]),
            help="also the keys requested in the last N days (not only valid entries)",
        )
        step.add_argument(
            "--min-hours-left",
            type=_bounded(float, *bounds["min_hours_left"]),
            default=0.0,
            help="only entries valid for at least this many more hours",
        )
        step.add_argument("--limit", type=_bounded(int, *bounds["limit"]), help="at most this many keys")
        if name == "start":
            step.add_argument(
                "--live", action="store_true", help="through the chat endpoint, for servers without a Batch API"
            )
    steps.add_parser("status", help="poll the submitted batches and collect the finished ones (safe from cron)")
    cancel = steps.add_parser(
        "cancel",
        help="cancel a rollout's batches still out: its keys can be planned again; what ran is still collected",
    )
    cancel.add_argument("--rollout-id", type=int, required=True, help="as `rollout status` lists it")


# Options whose value may begin with '-' (a user id `-A1`, a note `-3 kg too heavy`).
FREE_VALUES = ("--user-id", "--note", "--reason")


def with_values_attached(argv: list[str]) -> list[str]:
    """`--user-id -A1` as `--user-id=-A1`: such a value may begin with '-', which argparse
    would otherwise take for an option and refuse."""
    attached: list[str] = []
    rest = iter(argv)
    for arg in rest:
        value = next(rest, None) if arg in FREE_VALUES else None
        attached.append(arg if value is None else f"{arg}={value}")
    return attached
