"""`python -m core`: migrate, generate, cleanup, invalidate, reject, recall, rollout, stats, rollup,
alerts, metrics. JSON on stdout (SQL for `migrate --check`, Prometheus's text for `metrics --once`); errors and
notes on stderr, one line each, never a traceback or a password."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core import logs
from core.contract.models import ContractError
from core.contract.partial_program import ProgramSoFar, progress_line
from core.generators import make_generator, startup_warning
from core.operations import admin, alerts, metrics, monitoring, recall
from core.operations.fit_report import fit_by_generator
from core.operations.rollout import batches, reports
from core.operations.rollout import live as rollout_live
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import records as rollout_records
from core.operations.rollout import start as rollout_start
from core.serving.miss_reasons import MissReason
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.serving.single_flight import SingleFlightTimeout
from core.settings import Settings, describe_configuration_error
from core.store import rejections, waits
from core.store.adoption import SchemaRefused
from core.store.db import Database, describe_db_error, make_engine, missing_sqlite_file

log = logging.getLogger("core.cli")


EXIT_CODES = """exit codes:
  0  done (generate: the program was served and saved to history)
  1  failed: no program (nothing cached or saved), or the database could not be used
  2  invalid input or configuration (the field or environment variable is named)
  3  generate only: the program was produced and printed, but not saved to history"""
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_SAVED = 0, 1, 2, 3


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


def _parser() -> argparse.ArgumentParser:
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


def _emit(document: dict[str, Any]) -> None:
    print(json.dumps(document, default=str))


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _read_profile(path: Path) -> Any:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise ValueError(f"profile: cannot read {path} ({exc.strerror})") from None
    try:
        # A byte-order mark, as some editors write, is not part of the JSON.
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"profile: not valid UTF-8 JSON ({exc})") from None
    except RecursionError:
        # Python's parser gives up at about a thousand levels; a profile has two.
        shown = "stdin" if str(path) == "-" else path
        raise ValueError(f"profile: {shown} is JSON nested too deeply to be a profile (an object of answers)") from None


def _generate(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    try:
        responses = _read_profile(args.profile)
    except ValueError as exc:
        return _fail(EXIT_INVALID, str(exc))
    # The start-up and the request wait on the database DATABASE_WAIT_SECONDS in all.
    with waits.request_budget(settings.database_wait_seconds):
        return _check_schema_and_generate(args, responses, settings, database)


def _check_schema_and_generate(args: argparse.Namespace, responses: Any, settings: Settings, database: Database) -> int:
    try:
        database.ensure_schema()
    except DBAPIError as exc:
        # The program can still be made and printed; the service says what was not saved.
        log.warning(
            "schema check and migration skipped: database unavailable (%s): %s",
            settings.describe_database(),
            describe_db_error(exc),
        )
    generator = make_generator(settings)
    if warning := startup_warning(generator):
        log.warning(warning)
    service = ProgramService.from_settings(settings, database=database, generator=generator)
    try:
        result = service.generate(
            user_id=args.user_id,
            onboarding_responses=responses,
            has_paid_access=args.paid,
            force_refresh=args.force_refresh,
            on_waiting=_say_waiting if args.progress else None,
            on_progress=_ProgressLines() if args.progress else None,
        )
    except ContractError as exc:
        return _fail(EXIT_INVALID, str(exc))
    except (GenerationFailed, SingleFlightTimeout) as exc:
        return _fail(EXIT_FAILED, str(exc))
    _emit(
        {
            "cache_hit": result.cache_hit,
            "prewarmed_by_rollout": result.prewarmed_by,
            "cache_key": result.cache_key,
            "training_program_id": result.training_program_id,
            "latency_ms": round(result.latency_ms, 3),
            "miss_reason": result.miss_reason,
            "changed_fields": list(result.changed_fields),
            "expires_at": result.expires_at,
            "model": result.model,
            "generator_version": result.generator_version,
            "budget_reached": result.budget_reached,
            "warnings": list(result.warnings),
            "history_error": result.history_error,
            "program": result.program,
        }
    )
    if result.budget_reached is not None:
        print(f"note: made by the offline coach because {result.budget_reached}", file=sys.stderr)
    if result.history_error is not None:
        return _fail(EXIT_NOT_SAVED, f"the program was printed but not saved: {result.history_error}")
    return EXIT_OK


def _check_alerts(settings: Settings, database: Database) -> int:
    """Every rule, on stdout; exit 1, one line, when a message could not be sent (it is sent
    again on the next check)."""
    database.ensure_schema()
    done = alerts.check(database.engine, settings)
    _emit(
        {
            "firing": [alert.rule for alert in done.alerts if alert.firing],
            "rules": [dataclasses.asdict(alert) for alert in done.alerts],
            "sent": [dataclasses.asdict(d) for d in done.deliveries if d.error is None],
            "not_sent": [dataclasses.asdict(d) for d in done.deliveries if d.error is not None],
        }
    )
    if failed := [d for d in done.deliveries if d.error is not None]:
        told = ", ".join(f"{d.rule} {d.state}" for d in failed)
        return _fail(
            EXIT_FAILED,
            f"webhook {settings.describe_webhook()} answered {failed[0].error}: {told} not sent; "
            "sent again on the next check",
        )
    return EXIT_OK


def _say_waiting(_reason: MissReason) -> None:
    print("an identical request is generating this program; waiting for it", file=sys.stderr)


class _ProgressLines:
    """How far the writing is, a line on stderr each time that changes."""

    def __init__(self) -> None:
        self._last: str | None = None

    def __call__(self, so_far: ProgramSoFar) -> None:
        line = progress_line(so_far)
        if line is not None and line != self._last:
            self._last = line
            print(line, file=sys.stderr, flush=True)


def _check_migrations(database: Database) -> int:
    """The SQL `migrate` would run, on stdout (to read or to hand to psql), and on stderr
    what it amounts to when that is not plain from the SQL."""
    statements = database.pending_ddl()
    print("".join(f"{statement};\n" for statement in statements), end="")
    if (missing := database.missing_file()) is not None:
        print(
            f"{missing} does not exist yet: migrate would create it and run the SQL printed; nothing was created.",
            file=sys.stderr,
        )
    elif not statements:
        print("The schema is up to date; nothing to run.", file=sys.stderr)
    return EXIT_OK


def _migrate(_args: argparse.Namespace, settings: Settings, database: Database) -> dict[str, Any]:
    return {"revision": database.ensure_schema(), "database": settings.describe_database()}


def _cleanup(_args: argparse.Namespace, _settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    removal = admin.delete_expired_entries(database.engine, actor="cli")
    return {
        "deleted": removal.deleted,
        "bytes_reclaimed": removal.bytes_reclaimed,
        "staged_programs_dropped": removal.staged_dropped,
    }


def _rollup(_args: argparse.Namespace, _settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    return {"rolled_up_until": monitoring.refresh_rollup(database.engine)}


def _stats(_args: argparse.Namespace, settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    store = monitoring.storage(database.engine)
    totals = monitoring.summary(database.engine)
    usage = monitoring.usage_by_generator(database.engine)
    costs = monitoring.costs(usage, settings)
    rollouts = reports.spend(database.engine, settings)
    return {
        "entries": {"valid": store.valid_entries, "expired": store.expired_entries},
        "storage_bytes": store.table_bytes,
        "entry_bytes": {"valid": store.valid_bytes, "expired": store.expired_bytes},
        "requests": totals.requests,
        "hits": totals.hits,
        "generations": totals.generations,
        "llm_calls": costs.llm_calls,
        "llm_calls_avoided": costs.llm_calls_avoided,
        "hit_rate": totals.hit_rate,
        "cache_errors": totals.cache_read_errors + totals.cache_write_errors,
        "llm_cost_usd": round(costs.spent + rollouts.total, 6),
        "llm_cost_split_usd": {
            "input": round(costs.spend.input, 6),
            "cached_input": round(costs.spend.cached_input, 6),
            "output": round(costs.spend.output, 6),
            "batch": round(rollouts.batch, 6),
            "live_prewarm": round(rollouts.live, 6),
            "trials": round(rollouts.trials, 6),
        },
        "cost_saved_usd": round(costs.saved, 6),
        "prewarmed_hits_live_cost_usd": round(rollouts.saved, 6),
        "unpriced_models": sorted({*costs.unpriced_models, *rollouts.unpriced_models}),
        "generators": [_generator_stats(u, settings) for u in usage],
        "fit": [dataclasses.asdict(report) for report in fit_by_generator(database.engine)],
    }


def _generator_stats(usage: monitoring.GeneratorUsage, settings: Settings) -> dict[str, Any]:
    spent, saved = usage.cost_spent(settings), usage.cost_saved(settings)
    return {
        "generator_version": usage.generator_version,
        "model": usage.model,
        "hits": usage.hits,
        "generations": usage.generations,
        "errors": usage.errors,
        "hit_rate": usage.hit_rate,
        "llm_calls": usage.llm_calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": None if spent is None else round(spent, 6),
        "cost_saved_usd": None if saved is None else round(saved, 6),
        "rejected": usage.rejected,
    }


class _QuietRequests(WSGIRequestHandler):
    """No line on stderr per scrape: Prometheus scrapes every few seconds, forever."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _metrics(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    database.ensure_schema()
    if args.once:
        sys.stdout.write(metrics.exposition(database.engine, settings).decode())
        return EXIT_OK
    app = make_wsgi_app(metrics.registry(database.engine, settings))
    try:
        server = make_server(args.host, args.port, app, handler_class=_QuietRequests)
    except OSError as exc:
        return _fail(EXIT_FAILED, f"--port {args.port}: cannot listen on {args.host} ({exc.strerror})")
    print(f"serving metrics on http://{args.host}:{args.port}/metrics", file=sys.stderr, flush=True)
    with server, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is stopped
        server.serve_forever()
    return EXIT_OK


def _rollout(args: argparse.Namespace, settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    engine = database.engine
    if args.step in ("status", "cancel"):
        return _rollout_batches(args, settings, engine)
    generator = rollout_plan.candidate(settings, args.model)
    if warning := startup_warning(generator):
        log.warning(warning)
    if args.step == "try":
        tried = rollout_live.trial(engine, settings, generator, actor="cli", sample=args.sample)
        current = make_generator(settings).identity.version
        trial = reports.trial_report(engine, settings, tried, current_version=current)
        return {
            "rollout_id": trial.rollout_id,
            "model": trial.model,
            "generator_version": trial.generator_version,
            "current_generator_version": trial.current_version,
            "candidate": dataclasses.asdict(trial.candidate),
            "current": dataclasses.asdict(trial.current),
            "fit": [dataclasses.asdict(report) for report in trial.fit],
            "profiles": [
                {"cache_key": p.cache_key, "candidate": p.candidate_state, "error": p.candidate_error}
                for p in trial.profiles
            ],
        }
    selection = rollout_plan.Selection(args.requested_days, args.min_hours_left, args.limit)
    if args.step == "plan":
        plan = rollout_plan.plan(engine, settings, generator, selection)
        return {
            "model": plan.model,
            "generator_version": plan.generator_version,
            "keys": plan.count,
            "by_generator": plan.by_generator,
            "estimated_cost_usd": {"live": plan.live_cost, "batch": plan.batch_cost},
            "estimated_from_entries": plan.with_recorded_tokens,
        }
    started = rollout_start.start(engine, settings, generator, actor="cli", selection=selection, live=args.live)
    if started.error and not started.batch_ids:
        raise rollout_records.RolloutFailed(started.error)
    return dataclasses.asdict(started)


def _rollout_batches(args: argparse.Namespace, settings: Settings, engine: Engine) -> dict[str, Any]:
    """`status` (from cron) or `cancel`: what became of the batches out, and of live runs
    that stopped; each given up is one line on stderr, and the command still succeeds."""
    given_up_runs = rollout_live.give_up_stale(engine) if args.step == "status" else {}
    if args.step == "cancel":
        checks = batches.cancel(engine, settings, args.rollout_id)
    else:
        checks = batches.check_batches(engine, settings)
    if checks and all(check.problem for check in checks):
        done = "checked" if args.step == "status" else "cancelled"
        raise rollout_records.RolloutFailed(f"no batch could be {done}: {checks[0].problem}")
    for rollout_id, count in given_up_runs.items():
        print(f"note: rollout {rollout_id}: {count} requests {rollout_live.GIVEN_UP}", file=sys.stderr)
    for check in checks:
        if check.given_up:
            print(
                f"note: batch {check.batch_id} given up, its keys can be planned again: {check.given_up}",
                file=sys.stderr,
            )
    return {
        "batches": [dataclasses.asdict(check) for check in checks],
        "given_up_runs": given_up_runs,
        "rollouts": [_rollout_summary(engine, s) for s in reports.summaries(engine, settings, limit=10)],
    }


def _rollout_summary(engine: Engine, summary: reports.RolloutSummary) -> dict[str, Any]:
    problems = reports.problems(engine, summary.id) if set(reports.PROBLEMS) & set(summary.states) else []
    return {
        **dataclasses.asdict(summary),
        "phase": summary.phase,
        "problems": [dataclasses.asdict(p) for p in problems],
    }


def _invalidate(args: argparse.Namespace, _settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    if args.user_id is not None:
        user_id = database.check_user_id(args.user_id)
        removal = admin.invalidate_user(database.engine, actor="cli", user_id=user_id)
    else:
        removal = admin.retire_generator(database.engine, actor="cli", generator_version=args.generator)
        if removal.deleted == 0:
            print(f"{args.generator} made programs, but no entry of it is left: 0 entries deleted", file=sys.stderr)
    return {
        "deleted": removal.deleted,
        "bytes_reclaimed": removal.bytes_reclaimed,
        "staged_voided": removal.staged_voided,
    }


def _reject(args: argparse.Namespace, _settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    outcome = rejections.reject(
        database.engine, program_id=args.program_id, category=args.reason, note=args.note, actor="cli"
    )
    return {
        "training_program_id": outcome.training_program_id,
        "category": outcome.category,
        "rejected_by": outcome.rejected_by,
        "rejected_at": outcome.rejected_at,
        "cache_key": outcome.cache_key,
        "entry": outcome.entry,
        "staged_voided": outcome.staged_voided,
    }


def _recall(args: argparse.Namespace, settings: Settings, database: Database) -> dict[str, Any]:
    database.ensure_schema()
    if args.prewarm and not args.invalidate:
        raise recall.RecallRefused("prewarm", "regenerates the keys --invalidate recalls: give --invalidate too")
    if args.invalidate:
        recall.check_reason(args.reason)  # refused before anything is listed or written
    engine = database.engine
    selection = recall.Selection(args.generator, args.key, args.program_id, args.since, args.until)
    generator = recall.regenerator(engine, settings, selection, live=args.live) if args.prewarm else None
    report: dict[str, Any] = {"selection": selection.target}
    if args.csv is not None:
        try:
            with args.csv.open("w", encoding="utf-8", newline="") as out:
                report["count"], report["clients"] = recall.write_csv(engine, selection, out)
        except OSError as exc:
            raise recall.RecallRefused("csv", f"cannot write {args.csv} ({exc.strerror})") from None
        report["csv"] = str(args.csv)
    else:
        listed = [dataclasses.asdict(h) for h in recall.handouts(engine, selection)]
        report.update(count=len(listed), clients=len({h["user_id"] for h in listed}), handouts=listed)
    if report["count"] == 0:
        print(f"note: no program was handed out for {selection.target}: nothing to recall", file=sys.stderr)
        return report
    if args.invalidate:
        recalled = recall.recall(engine, selection, reason=args.reason, actor="cli")
        report["recalled"] = dataclasses.asdict(recalled)
    if generator is not None:
        started = recall.prewarm(engine, settings, selection, generator, actor="cli", live=args.live)
        report["prewarm"] = dataclasses.asdict(started)
    return report


REPORTS: dict[str, Callable[[argparse.Namespace, Settings, Database], dict[str, Any]]] = {
    "migrate": _migrate,
    "cleanup": _cleanup,
    "invalidate": _invalidate,
    "reject": _reject,
    "recall": _recall,
    "rollout": _rollout,
    "rollup": _rollup,
    "stats": _stats,
}


# The commands that may create a SQLite file not there yet (as the dashboard does). Any
# other on a missing file is a mistyped path: it would report on, or clean, a new empty one.
CREATE_THE_DATABASE = ("migrate", "generate")


# Options whose value may begin with '-' (a user id `-A1`, a note `-3 kg too heavy`).
FREE_VALUES = ("--user-id", "--note", "--reason")


def _with_values_attached(argv: list[str]) -> list[str]:
    """`--user-id -A1` as `--user-id=-A1`: such a value may begin with '-', which argparse
    would otherwise take for an option and refuse."""
    attached: list[str] = []
    rest = iter(argv)
    for arg in rest:
        value = next(rest, None) if arg in FREE_VALUES else None
        attached.append(arg if value is None else f"{arg}={value}")
    return attached


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_with_values_attached(sys.argv[1:] if argv is None else argv))
    try:
        settings = Settings()
    except ValidationError as exc:
        return _fail(EXIT_INVALID, describe_configuration_error(exc))
    logs.configure(settings.log_level, settings.log_format)
    database = Database(make_engine(settings.database_url), settings.migrations_database_url)
    try:
        if args.command not in CREATE_THE_DATABASE and (missing := missing_sqlite_file(database.engine)):
            return _fail(EXIT_INVALID, f"DATABASE_URL: {missing} does not exist; `python -m core migrate` creates it")
        if args.command == "generate":
            return _generate(args, settings, database)
        if args.command == "metrics":
            return _metrics(args, settings, database)
        if args.command == "migrate" and args.check:
            return _check_migrations(database)
        if args.command == "alerts":
            return _check_alerts(settings, database)
        _emit(REPORTS[args.command](args, settings, database))
        return EXIT_OK
    except (SchemaRefused, rollout_records.RolloutFailed) as exc:
        return _fail(EXIT_FAILED, str(exc))
    except ContractError as exc:
        return _fail(EXIT_INVALID, str(exc))
    except DBAPIError as exc:
        return _fail(EXIT_FAILED, f"database unavailable ({settings.describe_database()}): {describe_db_error(exc)}")
    finally:
        database.dispose()
