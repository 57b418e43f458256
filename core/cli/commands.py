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
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core import logs
from core.cli.arguments import EXIT_FAILED, EXIT_INVALID, EXIT_NOT_SAVED, EXIT_OK, parser, with_values_attached
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
            **{kind: round(amount, 6) for kind, amount in costs.spend.by_price().items()},
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
        **usage.billed.as_columns(),
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(with_values_attached(sys.argv[1:] if argv is None else argv))
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
