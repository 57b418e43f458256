"""`python -m core` as cron and operators run it: JSON on stdout, one line on stderr, exit codes.
Run in this process (`core.cli.main`), as the process boundary is not what these tests are
about; a few run the real entry point (`run_process`) where it is."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import Engine, select

from core.contract.models import load_contract
from core.generators import OfflineGenerator
from core.settings import Settings
from core.store import rejections
from core.store.db import make_engine
from core.store.schema import admin_actions, ai_coach_cache
from testkit.pg_server import free_port
from tests.conftest import CliRun, Run
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE, ROOT, insert_entries, start_cli, table_counts


def run_process(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    process = start_cli(database_url, *args, **env)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def output(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_migrate_is_idempotent(run: Run, database_url: str) -> None:
    assert output(run(database_url, "migrate"))["revision"] == output(run(database_url, "migrate"))["revision"]


def test_migrate_check_on_an_up_to_date_schema_says_so(run: Run, database_url: str) -> None:
    output(run(database_url, "migrate"))
    done = run(database_url, "migrate", "--check")
    assert (done.returncode, done.stdout) == (0, b"")
    assert one_line(done) == "The schema is up to date; nothing to run."


def test_migrate_check_on_a_sqlite_file_not_there_yet_creates_nothing_and_prints_the_whole_migration(
    run: Run,
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "coach.db"
    done = run(f"sqlite:///{path}", "migrate", "--check")
    assert done.returncode == 0
    assert list(tmp_path.iterdir()) == []
    says = f"{path} does not exist yet: migrate would create it and run the SQL printed; nothing was created."
    assert one_line(done) == says
    # The SQL printed is all of it: run by hand on a new file, it leaves nothing to migrate.
    by_hand = tmp_path / "by-hand.db"
    connection = sqlite3.connect(by_hand)
    connection.executescript(done.stdout.decode())
    connection.close()
    again = run(f"sqlite:///{by_hand}", "migrate", "--check")
    assert (again.returncode, again.stdout, one_line(again)) == (0, b"", "The schema is up to date; nothing to run.")
    output(run(f"sqlite:///{path}", "migrate"))  # which creates the file, and its directory
    assert path.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["cleanup"],
        ["rollup"],
        ["invalidate", "--generator", "v1"],
        ["reject", "--program-id", "1", "--reason", rejections.CATEGORIES[0]],
        ["rollout", "status"],
    ],
)
def test_a_command_that_only_reads_or_cleans_refuses_a_sqlite_file_not_there(
    cli: Callable[..., CliRun], tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "mistyped" / "coach.db"
    done = cli(f"sqlite:///{path}", *command)
    assert (done.code, done.stdout) == (2, "")
    assert done.stderr == f"error: DATABASE_URL: {path} does not exist; `python -m core migrate` creates it\n"
    assert list(tmp_path.iterdir()) == []


def test_generate_miss_then_hit(run: Run, database_url: str, profile_file: Path) -> None:
    first = output(run(database_url, "generate", "--user-id", "u1", "--profile", str(profile_file), "--paid"))
    second = output(run(database_url, "generate", "--user-id", "u1", "--profile", str(profile_file), "--paid"))
    for key in ("cache_hit", "cache_key", "training_program_id", "latency_ms", "miss_reason", "program"):
        assert key in first
    assert (first["cache_hit"], first["miss_reason"]) == (False, "first_generation")
    assert (second["cache_hit"], second["miss_reason"]) == (True, None)
    assert second["training_program_id"] == first["training_program_id"] + 1
    assert second["program"] == first["program"] and first["cache_key"].startswith("program:uu1:paidtrue:d")
    forced = output(
        run(database_url, "generate", "--user-id", "u1", "--profile", str(profile_file), "--paid", "--force-refresh")
    )
    assert (forced["cache_hit"], forced["miss_reason"]) == (False, "forced_refresh")


# The pages a reader is pointed to, each command in them run as written.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = ".venv/bin/python -m core "
README_MOST_BYTES = 12 * 1024  # issue 31: what Coach Cache is, the two commands, a map of the code and the docs


def documented_commands() -> list[list[str]]:
    """Each `python -m core` line of the README and docs/ once, as its words after the module,
    its comment left out."""
    lines = [line for doc in DOCS for line in doc.read_text().splitlines() if line.startswith(COMMAND)]
    return [shlex.split(line, comments=True)[3:] for line in dict.fromkeys(lines)]


def as_run(words: list[str]) -> list[list[str]]:
    """The command without the options in brackets, then with them (`[--sample 10]` is one)."""
    without, with_all, inside = [], [], False
    for word in words:
        inside = inside or word.startswith("[")
        if not inside:
            without.append(word)
        with_all.append(word.strip("[]"))
        inside = inside and not word.endswith("]")
    return [without] if without == with_all else [without, with_all]


def test_every_command_in_the_readme_and_the_docs_runs_as_written(
    cli: Callable[..., CliRun], tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    commands = documented_commands()
    assert {words[0] for words in commands} == {
        "migrate", "generate", "cleanup", "invalidate", "reject", "rollout", "stats", "rollup", "recall", "alerts",
        "metrics",
    }  # fmt: skip
    # A database as an operator's would be when they run them: the README's example client's
    # program (the offline coach's, the embedded default), and a pre-warm's batch still out.
    openai = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    example = ROOT / "examples" / "profile.json"
    jsonschema.Draft202012Validator(load_contract("onboarding_responses")).validate(json.loads(example.read_text()))
    made = tmp_path / "made"
    url = f"sqlite:///{made}/coach.db"
    program = cli(url, "generate", "--user-id", "client-1", "--profile", str(example)).json()
    out = cli(url, "rollout", "start", "--model", "gpt-4.1-mini", **openai).json()
    # The docs' placeholders, each a value that names something in that database.
    values = {
        "ID": str(program["training_program_id"]),
        "VERSION": program["generator_version"],
        "CATEGORY": rejections.CATEGORIES[0],
        "TEXT": "ignores the knee",
        "M": "gpt-4.1",
        "N": str(out["rollout_id"]),
        "H": "1",
    }
    for words in commands:
        for args in as_run(words):
            args = [values.get(word, word) for word in args]
            assert not [word for word in args if re.fullmatch("[A-Z]+", word)], f"a placeholder with no value: {args}"
            if "--profile" in args:  # a path in the checkout, where the docs run it
                args[args.index("--profile") + 1] = str(ROOT / args[args.index("--profile") + 1])
            fresh = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
            shutil.copytree(made, fresh)
            if args[0] == "metrics" and "--once" not in args:  # a server runs until stopped: one scrape here
                args.append("--once")
            env = openai if args[0] == "rollout" else {}
            done = cli(f"sqlite:///{fresh}/coach.db", *args, **env)
            assert done.code == 0, (args, done.stderr)


def test_the_readme_is_at_most_12_kb() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= README_MOST_BYTES


def test_every_setting_is_in_the_configuration_table_and_nothing_else_is() -> None:
    table = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (
            ["--user-id", "u1", "--profile", "-"],
            json.dumps({**PROFILE, "days_per_week": "5"}).encode(),
            "days_per_week",
        ),
        (["--user-id", "u1", "--profile", "-"], json.dumps({**PROFILE, "color": 1}).encode(), "color"),
        (["--user-id", "u:1", "--profile", "-"], json.dumps(PROFILE).encode(), "user_id"),
        (["--user-id", "u1", "--profile", "-"], b'{"goal": "strength", \xff}', "not valid UTF-8 JSON"),
        (["--user-id", "u1", "--profile", "/nonexistent/p.json"], None, "cannot read"),
        (["--user-id", "u1", "--profile", "-"], b"[" * 100_000 + b"]" * 100_000, "stdin is JSON nested too deeply"),
    ],
)
def test_invalid_input_exits_2_with_one_line_and_writes_nothing(
    run: Run, database_url: str, args: list[str], stdin: bytes | None, says: str
) -> None:
    output(run(database_url, "migrate"))
    done = run(database_url, "generate", *args, stdin=stdin)
    assert done.returncode == 2
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and says in lines[0]
    engine = make_engine(database_url)
    assert table_counts(engine) == (0, 0, 0)
    engine.dispose()


@pytest.mark.parametrize(
    "args",
    [
        ["rollout", "plan", "--model", "m", "--requested-days", "1e12"],
        ["rollout", "plan", "--model", "m", "--min-hours-left", "1e12"],
        ["rollout", "start", "--model", "m", "--min-hours-left", "1e308"],
        ["rollout", "plan", "--model", "m", "--min-hours-left", "nan"],
        ["rollout", "plan", "--model", "m", "--requested-days", "-1"],
        ["rollout", "start", "--model", "m", "--limit", "1e3"],
        ["rollout", "try", "--model", "m", "--sample", "1000000000000"],
    ],
)
def test_every_number_on_the_command_line_is_bounded_in_one_line(
    cli: Callable[..., CliRun], tmp_path: Path, args: list[str]
) -> None:
    database = tmp_path / "coach.db"
    done = cli(f"sqlite:///{database}", *args, OPENAI_API_KEY="sk-test")
    assert (done.code, done.stdout) == (2, "")
    [line] = done.stderr.splitlines()
    refusal = r"error: argument --[a-z-]+: must be a (whole )?number from \d+ to \d+, not '.+' \(see .+ --help\)"
    assert re.fullmatch(refusal, line), line
    assert not database.exists()  # refused before anything was opened


def test_generation_failure_exits_1_and_writes_nothing_but_the_error_event(
    run: Run, database_url: str, profile_file: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(mode="status", status=500))
    done = run(
        database_url,
        "generate",
        "--user-id",
        "u1",
        "--profile",
        str(profile_file),
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_MAX_RETRIES="0",
    )
    assert done.returncode == 1
    assert "HTTP 500" in done.stderr.decode() and "Nothing was cached or saved" in done.stderr.decode()
    assert "sk-test" not in done.stderr.decode()
    engine = make_engine(database_url)
    assert table_counts(engine)[:2] == (0, 0)
    engine.dispose()


def test_generate_with_progress_says_how_far_the_llm_is_on_stderr_and_prints_one_object(
    cli: Callable[..., CliRun], database_url: str, profile_file: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(tokens_per_second=2000))  # about 0.9 s for the whole answer
    done = cli(
        database_url,
        "generate",
        "--user-id",
        "u1",
        "--profile",
        str(profile_file),
        "--progress",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_openai.base_url,
        LOG_LEVEL="WARNING",
    )
    assert done.json()["cache_hit"] is False  # stdout is the one JSON object, as without --progress
    lines = done.stderr.splitlines()
    weeks = [line for line in lines if line.startswith("week ")]
    assert weeks and all(re.fullmatch(r"week [1-4] of 4: [1-3] of 3 sessions written", line) for line in weeks), lines
    assert len(set(lines)) == len(lines)  # a line each time it changes
    assert set(lines) - set(weeks) <= {"title written", "title and summary written"}


def test_cleanup_deletes_only_expired_program_entries(run: Run, engine: Engine, database_url: str) -> None:
    for i in range(7):
        insert_entries(engine, [f"program:uu{i}:paidfalse:dexpired"], expired=True)
    insert_entries(engine, ["program:uvalid:paidfalse:dvalid"], expired=False)
    insert_entries(engine, ["recommendation:u1:expired"], expired=True)  # another AI-coach feature's entry

    assert output(run(database_url, "cleanup"))["deleted"] == 7

    with engine.connect() as connection:
        left = set(connection.execute(select(ai_coach_cache.c.cache_key)).scalars())
        action = connection.execute(select(admin_actions)).one()
    assert left == {"program:uvalid:paidfalse:dvalid", "recommendation:u1:expired"}
    assert (action.actor, action.action, action.rows_affected, action.bytes_reclaimed) == ("cli", "cleanup", 7, 700)
    assert output(run(database_url, "cleanup"))["deleted"] == 0


def test_cleanup_works_in_batches(engine: Engine) -> None:
    from core.store.entries import delete_expired

    for i in range(10):
        insert_entries(engine, [f"program:uu{i}:paidfalse:dx"], expired=True)
    removal = delete_expired(engine, actor="test", batch_size=3)
    assert (removal.deleted, removal.bytes_reclaimed) == (10, 1000)


def test_stats(run: Run, database_url: str, profile_file: Path) -> None:
    run(database_url, "generate", "--user-id", "u1", "--profile", str(profile_file))
    run(database_url, "generate", "--user-id", "u1", "--profile", str(profile_file))
    stats = output(run(database_url, "stats"))
    assert stats["entries"] == {"valid": 1, "expired": 0}
    assert stats["hit_rate"] == 0.5 and stats["storage_bytes"] > 0
    # The offline generator made the program: a generation, but no LLM call and no cost.
    assert (stats["generations"], stats["llm_calls"], stats["llm_calls_avoided"]) == (1, 0, 0)
    [generator] = stats["generators"]
    assert generator["model"] == "offline-rules-v1" and generator["generator_version"].startswith("offline-")
    assert (generator["hits"], generator["generations"], generator["cost_usd"], generator["cost_saved_usd"]) == (
        1,
        1,
        0,
        0,
    )


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.process
def test_the_entry_point_refuses_a_bad_setting_in_one_line_with_exit_2(tmp_path: Path, profile_file: Path) -> None:
    done = run_process(
        f"sqlite:///{tmp_path}/coach.db",
        "generate",
        "--user-id",
        "u1",
        "--profile",
        str(profile_file),
        CACHE_TTL_HOURS="1e9",
    )
    assert (done.returncode, done.stdout) == (2, b"")
    assert one_line(done).startswith("error: configuration: CACHE_TTL_HOURS=1e9: Input should be less than or equal")
    assert not (tmp_path / "coach.db").exists()


@pytest.fixture
def unreachable_url() -> str:
    # A port nothing listens on, and a password that must never be printed.
    return f"postgresql://coach:pa55word@127.0.0.1:{free_port()}/coach"


@pytest.mark.parametrize("command", ["stats", "cleanup", "migrate", "rollup"])
def test_an_unreachable_database_exits_1_with_one_line(run: Run, unreachable_url: str, command: str) -> None:
    done = run(unreachable_url, command)
    assert done.returncode == 1 and done.stdout == b""
    line = one_line(done)
    assert line.startswith("error: database unavailable (PostgreSQL 127.0.0.1:") and "Connection refused" in line
    assert "pa55word" not in line


@pytest.mark.process
def test_generate_without_its_database_prints_the_program_and_exits_3(unreachable_url: str, profile_file: Path) -> None:
    done = run_process(unreachable_url, "generate", "--user-id", "u1", "--profile", str(profile_file))
    assert done.returncode == 3
    printed = json.loads(done.stdout)
    assert printed["program"]["weeks"] and printed["training_program_id"] is None
    assert printed["miss_reason"] == "cache_unavailable" and printed["history_error"]
    stderr = done.stderr.decode()
    assert stderr.strip().splitlines()[-1].startswith("error: the program was printed but not saved")
    assert "Traceback" not in stderr and "pa55word" not in stderr


@pytest.mark.process
def test_the_exit_codes_are_in_the_help() -> None:
    done = run_process("sqlite:///unused.db", "--help")
    assert done.returncode == 0
    for code in ("0  done", "1  failed", "2  invalid input or configuration", "3  generate only"):
        assert code in done.stdout.decode()


def test_a_profile_file_with_a_byte_order_mark_is_accepted(run: Run, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_bytes(b"\xef\xbb\xbf" + json.dumps(PROFILE).encode())
    url = f"sqlite:///{tmp_path}/coach.db"
    assert output(run(url, "generate", "--user-id", "u1", "--profile", str(profile)))["program"]["weeks"]


def test_each_request_is_one_log_line_without_the_answers(run: Run, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({**PROFILE, "injuries": "torn ACL, left knee"}))
    url = f"sqlite:///{tmp_path}/coach.db"
    args = ("generate", "--user-id", "u1", "--profile", str(profile))
    miss = run(url, *args, LOG_FORMAT="json")
    hit = run(url, *args)
    quiet = run(url, *args, LOG_LEVEL="warning")
    assert [d.returncode for d in (miss, hit, quiet)] == [0, 0, 0]
    (line,) = miss.stderr.decode().splitlines()
    logged = json.loads(line)
    digest = json.loads(miss.stdout)["cache_key"].rsplit(":d", 1)[1]
    assert (logged["level"], logged["message"], logged["outcome"]) == ("INFO", "Cache miss", "miss")
    assert (logged["miss_reason"], logged["user_id"], logged["key_digest"]) == ("first_generation", "u1", digest[:8])
    assert logged["latency_ms"] > 0 and logged["saved"] is True
    (text,) = hit.stderr.decode().splitlines()
    assert text.startswith("INFO core.serving.service: Cache hit outcome=hit") and f"key_digest={digest[:8]}" in text
    assert quiet.stderr == b""
    for done in (miss, hit):
        assert "ACL" not in done.stderr.decode() and "strength" not in done.stderr.decode()


def test_invalidate_a_user_or_a_generator_from_the_command_line(
    run: Run, database_url: str, profile_file: Path
) -> None:
    for user in ("u1", "u2"):
        output(run(database_url, "generate", "--user-id", user, "--profile", str(profile_file)))
    engine = make_engine(database_url)
    insert_entries(engine, ["recommendation:uu1:today"], expired=False)
    assert output(run(database_url, "invalidate", "--user-id", "u1"))["deleted"] == 1
    version = OfflineGenerator.identity.version
    typo = run(database_url, "invalidate", "--generator", "nope")
    assert (typo.returncode, typo.stdout) == (2, b"")
    assert one_line(typo) == (
        f"error: invalid invalidation: generator: nope never made a program here (the versions that did: {version})"
    )
    assert output(run(database_url, "invalidate", "--generator", version))["deleted"] == 1
    again = run(database_url, "invalidate", "--generator", version)
    assert output(again)["deleted"] == 0
    assert one_line(again) == f"{version} made programs, but no entry of it is left: 0 entries deleted"
    with engine.connect() as connection:
        left = connection.execute(select(ai_coach_cache.c.cache_key)).scalars().all()
        audited = connection.execute(select(admin_actions.c.action, admin_actions.c.target)).all()
    engine.dispose()
    assert left == ["recommendation:uu1:today"]
    assert [tuple(a) for a in audited] == [
        ("invalidate_user", "u1"),
        ("retire_generator", version),
        ("retire_generator", version),
    ]
    refused = run(database_url, "invalidate", "--user-id", "a:b")
    assert refused.returncode == 2 and "user_id" in one_line(refused)


def test_a_user_id_that_begins_with_a_dash_is_the_value_of_user_id(
    cli: Callable[..., CliRun], database_url: str, profile_file: Path
) -> None:
    done = cli(database_url, "generate", "--user-id", "-A1", "--profile", str(profile_file))
    assert done.json()["cache_key"].startswith("program:u-A1:paidfalse:d")
    assert cli(database_url, "invalidate", "--user-id", "-A1").json()["deleted"] == 1
