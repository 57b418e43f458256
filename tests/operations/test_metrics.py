"""`python -m core metrics` (issue 33): the figures `stats` gives, in Prometheus's text format,
read from the tables, so counters stay whole once the request log is rolled up and pruned;
Debian's Prometheus scraping the exporter; the example alert rules checked and unit-tested."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, delete

from core.operations import alerts, metrics, monitoring
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.schema import generation_events, utcnow
from testkit.pg_server import free_port
from tests.conftest import CliRun
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.generators.test_openai_generator import openai_service
from tests.helpers import NEUTRAL_CWD, PROFILE, ROOT, app_environment, insert_entries

RULES = ROOT / "ops" / "prometheus"
# Labels of a sample, as a sorted tuple of pairs: a sample's key beside its family's name.
Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(text: str) -> dict[Sample, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples that have these labels, as PromQL's sum() reads them."""
    return sum(
        value for (sample, pairs), value in samples.items() if sample == name and set(labels.items()) <= set(pairs)
    )


def requests_through_the_service(engine: Engine, fake_openai: FakeOpenAI) -> str:
    """A miss, a hit, a forced refresh and a failed generation, billed at gpt-4o-mini's
    price; an expired entry left for cleanup. Returns the generator version asked."""
    fake_openai.reset(Behaviour(cached_tokens=100, reasoning_tokens=300))
    service: ProgramService = openai_service(engine, fake_openai, model="gpt-4o-mini")
    made = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True)
    service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True)
    service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True, force_refresh=True)
    fake_openai.reset(Behaviour(mode="status", status=500))
    with pytest.raises(GenerationFailed):
        service.generate(user_id="u2", onboarding_responses=PROFILE, has_paid_access=True)
    insert_entries(engine, ["program:old"], expired=True)
    assert made.generator_version is not None
    return made.generator_version


def test_the_exported_figures_are_what_stats_says(
    cli: Callable[..., CliRun], database_url: str, engine: Engine, fake_openai: FakeOpenAI
) -> None:
    version = requests_through_the_service(engine, fake_openai)
    stats = cli(database_url, "stats").json()
    exported = cli(database_url, "metrics", "--once")
    assert exported.code == 0, exported.stderr
    samples = scrape(exported.stdout)

    requests = {
        (dict(labels)["outcome"], dict(labels)["miss_reason"], dict(labels)["generator"]): value
        for (name, labels), value in samples.items()
        if name == "coach_cache_requests_total"
    }
    assert requests == {
        ("miss", "first_generation", version): 1,
        ("hit", "", version): 1,
        ("bypass", "forced_refresh", version): 1,
        ("error", "first_generation", version): 1,
    }
    assert sum(requests.values()) == stats["requests"]
    assert total(samples, "coach_cache_requests_total", outcome="hit") == stats["hits"]
    assert total(samples, "coach_cache_llm_calls_total") == stats["llm_calls"] == 3
    assert total(samples, "coach_cache_llm_calls_avoided_total") == stats["llm_calls_avoided"] == 1
    [generator] = stats["generators"]
    tokens = {kind: total(samples, "coach_cache_llm_tokens_total", kind=kind) for kind in ("input", "cached_input")}
    assert tokens["input"] + tokens["cached_input"] == generator["prompt_tokens"]
    assert tokens["cached_input"] == generator["cached_tokens"] > 0
    assert total(samples, "coach_cache_llm_tokens_total", kind="output") == generator["completion_tokens"]
    assert total(samples, "coach_cache_llm_reasoning_tokens_total") == generator["reasoning_tokens"] > 0
    assert total(samples, "coach_cache_llm_spend_usd_total") == pytest.approx(stats["llm_cost_usd"], abs=1e-6)
    assert stats["llm_cost_usd"] > 0
    assert total(samples, "coach_cache_cache_errors_total") == stats["cache_errors"]
    for state in ("valid", "expired"):
        assert total(samples, "coach_cache_entries", state=state) == stats["entries"][state] == 1
        assert total(samples, "coach_cache_entry_bytes", state=state) == stats["entry_bytes"][state]
    assert total(samples, "coach_cache_storage_bytes") == stats["storage_bytes"]
    assert 0 < time.time() - total(samples, "coach_cache_oldest_expired_entry_timestamp_seconds") < 2 * 3600

    cli(database_url, "cleanup").json()
    samples = scrape(cli(database_url, "metrics", "--once").stdout)
    assert total(samples, "coach_cache_admin_actions_total", action="cleanup") == 1
    assert total(samples, "coach_cache_deleted_entries_total", action="cleanup") == 1
    assert not [name for name, _ in samples if name == "coach_cache_oldest_expired_entry_timestamp_seconds"]


def counters(samples: dict[Sample, float]) -> dict[Sample, float]:
    return {key: value for key, value in samples.items() if key[0].endswith("_total")}


def test_counters_stay_whole_once_the_request_log_is_rolled_up_and_pruned(
    cli: Callable[..., CliRun], database_url: str, engine: Engine, fake_openai: FakeOpenAI
) -> None:
    requests_through_the_service(engine, fake_openai)
    # An exporter running all along, and one started afresh for each scrape.
    running = metrics.registry(engine, Settings())
    before = counters(scrape(generate_latest(running).decode()))
    assert counters(scrape(cli(database_url, "metrics", "--once").stdout)) == before
    # An hour later the rollup has those requests; an operator then deletes the raw events.
    monitoring.refresh_rollup(engine, utcnow() + timedelta(hours=2))
    with engine.begin() as connection:
        connection.execute(delete(generation_events))
    # The refused-programs counter is read from the request log (as the fit report is): none here.
    assert counters(scrape(generate_latest(running).decode())) == before
    assert counters(scrape(cli(database_url, "metrics", "--once").stdout)) == before
    assert total(before, "coach_cache_requests_total", outcome="miss") == 1


def test_a_running_exporter_counts_the_entries_at_most_once_a_minute(
    cli: Callable[..., CliRun], database_url: str, engine: Engine
) -> None:
    running = metrics.registry(engine, Settings())
    assert total(scrape(generate_latest(running).decode()), "coach_cache_entries", state="valid") == 0
    insert_entries(engine, ["program:new"], expired=False)
    # The next scrape, within the minute, shows the count it read; a new exporter counts again.
    assert total(scrape(generate_latest(running).decode()), "coach_cache_entries", state="valid") == 0
    fresh = scrape(cli(database_url, "metrics", "--once").stdout)
    assert total(fresh, "coach_cache_entries", state="valid") == 1


def test_each_alert_rule_is_exported_as_the_last_check_recorded_it(engine: Engine) -> None:
    insert_entries(engine, ["program:old"], expired=True)  # expired an hour ago, never cleaned up
    settings = Settings(alert_cleanup_overdue_hours=0.5)
    before = scrape(metrics.exposition(engine, settings).decode())
    assert total(before, "coach_cache_alert_firing") == 0  # no check has run: no state to say
    alerts.check(engine, settings)
    samples = scrape(metrics.exposition(engine, settings).decode())
    assert samples[("coach_cache_alert_firing", (("rule", "cleanup"),))] == 1.0
    assert samples[("coach_cache_alert_firing", (("rule", "errors"),))] == 0.0


def test_a_port_in_use_is_refused_in_one_line(cli: Callable[..., CliRun], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/coach.db"
    cli(url, "migrate").json()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli(url, "metrics", "--host", "127.0.0.1", "--port", str(port))
    assert (done.code, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [f"error: --port {port}: cannot listen on 127.0.0.1 (Address already in use)"]


def get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())
    except OSError:
        return None


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], what: str, seconds: float = 90) -> Any:
    """`read()` again until `done` says it is; a loaded machine may take long to start a server."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {seconds} s"
        time.sleep(0.2)


@contextmanager
def running(args: list[str], log: Path, **options: Any) -> Iterator[None]:
    """A process for the test's duration, its output in `log`, stopped at the end."""
    with log.open("wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=output, cwd=NEUTRAL_CWD, **options)
        try:
            yield
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Debian's Prometheus scraping `target` every second, its data in `tmp_path`: its query API."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: coach-cache\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    args = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(args, tmp_path / "prometheus.log"):
        yield f"http://127.0.0.1:{port}/api/v1/query"


def query(api: str, promql: str) -> float | None:
    """The value of a PromQL query now, None before it has one."""
    answer = get(f"{api}?{urllib.parse.urlencode({'query': promql})}")
    result = json.loads(answer)["data"]["result"] if answer else []
    return float(result[0]["value"][1]) if result else None


@pytest.mark.process
def test_prometheus_scraping_the_exporter_reads_what_stats_says(
    cli: Callable[..., CliRun], tmp_path: Path, fake_openai: FakeOpenAI, profile_file: Path
) -> None:
    url = f"sqlite:///{tmp_path}/coach.db"
    for _ in range(3):
        cli(url, "generate", "--user-id", "u1", "--profile", str(profile_file)).json()
    stats = cli(url, "stats").json()
    port = free_port()
    exporter = [sys.executable, "-m", "core", "metrics", "--host", "127.0.0.1", "--port", str(port)]
    with (
        running(exporter, tmp_path / "exporter.log", env=app_environment(url)),
        prometheus(tmp_path, f"127.0.0.1:{port}") as api,
    ):
        served = wait_for(lambda: query(api, "sum(coach_cache_requests_total)"), lambda v: v is not None, "scraped")
        assert served == stats["requests"] == 3
        hits = 'sum(coach_cache_requests_total{outcome="hit"})'
        hit_rate = query(api, f'{hits} / sum(coach_cache_requests_total{{outcome=~"hit|miss|bypass"}})')
        assert hit_rate == pytest.approx(stats["hit_rate"])
        assert query(api, 'coach_cache_entries{state="valid"}') == stats["entries"]["valid"] == 1
        # A request from another process: the next scrapes read it from the table.
        cli(url, "generate", "--user-id", "u2", "--profile", str(profile_file)).json()
        wait_for(lambda: query(api, "sum(coach_cache_requests_total)"), lambda v: v == 4, "the new request")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=RULES, timeout=600)


def test_the_example_alert_rules_are_valid_and_fire_on_what_they_are_for() -> None:
    checked = promtool("check", "rules", "coach-cache-rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "coach-cache-rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
