"""`python -m core`: migrate, generate, cleanup, stats, rollup. JSON on stdout; errors on stderr.

Exit codes: 0 done, 1 generation failed (nothing cached or saved), 2 invalid input."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from core import admin, monitoring
from core.db import make_engine, migrate
from core.generators import make_generator, startup_warning
from core.models import ContractError
from core.service import GenerationFailed, ProgramService
from core.settings import Settings
from core.single_flight import SingleFlightTimeout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Coach Cache: ADR-049 program cache")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply database migrations")
    generate = commands.add_parser("generate", help="generate a program, through the cache")
    generate.add_argument("--user-id", required=True)
    generate.add_argument(
        "--profile", required=True, type=Path, help="onboarding responses, a JSON file ('-' for stdin)"
    )
    generate.add_argument("--paid", action="store_true", help="the user has paid access")
    generate.add_argument("--force-refresh", action="store_true", help="bypass the cache and regenerate")
    commands.add_parser("cleanup", help="delete expired program entries")
    commands.add_parser("stats", help="cache entries, storage and hit rate")
    commands.add_parser("rollup", help="roll settled hours of requests into the monitoring rollup (for cron)")
    return parser


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
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"profile: not valid UTF-8 JSON ({exc})") from None


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        responses = _read_profile(args.profile)
    except ValueError as exc:
        return _fail(2, str(exc))
    engine = make_engine(settings.database_url)
    migrate(engine)
    generator = make_generator(settings)
    if warning := startup_warning(generator):
        logging.getLogger("core.cli").warning(warning)
    service = ProgramService.from_settings(settings, engine=engine, generator=generator)
    try:
        result = service.generate(
            user_id=args.user_id,
            onboarding_responses=responses,
            has_paid_access=args.paid,
            force_refresh=args.force_refresh,
        )
    except ContractError as exc:
        return _fail(2, str(exc))
    except (GenerationFailed, SingleFlightTimeout) as exc:
        return _fail(1, str(exc))
    _emit(
        {
            "cache_hit": result.cache_hit,
            "cache_key": result.cache_key,
            "training_program_id": result.training_program_id,
            "latency_ms": round(result.latency_ms, 3),
            "miss_reason": result.miss_reason,
            "changed_fields": list(result.changed_fields),
            "expires_at": result.expires_at,
            "model": result.model,
            "warnings": list(result.warnings),
            "history_error": result.history_error,
            "program": result.program,
        }
    )
    return 0 if result.history_error is None else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if args.command == "generate":
        return _generate(args, settings)
    engine = make_engine(settings.database_url)
    revision = migrate(engine)
    if args.command == "migrate":
        _emit({"revision": revision, "database": settings.describe_database()})
    elif args.command == "cleanup":
        removal = admin.delete_expired_entries(engine, actor="cli")
        _emit({"deleted": removal.deleted, "bytes_reclaimed": removal.bytes_reclaimed})
    elif args.command == "rollup":
        _emit({"rolled_up_until": monitoring.refresh_rollup(engine)})
    elif args.command == "stats":
        store = monitoring.storage(engine)
        totals = monitoring.summary(engine)
        _emit(
            {
                "entries": {"valid": store.valid_entries, "expired": store.expired_entries},
                "storage_bytes": store.table_bytes,
                "entry_bytes": {"valid": store.valid_bytes, "expired": store.expired_bytes},
                "requests": totals.requests,
                "hits": totals.hits,
                "llm_calls": totals.llm_calls,
                "hit_rate": totals.hit_rate,
                "cache_errors": totals.cache_read_errors + totals.cache_write_errors,
                "llm_cost_usd": round(totals.cost_spent(settings), 6),
            }
        )
    return 0
