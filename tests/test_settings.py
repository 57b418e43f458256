"""Settings an operator can get wrong: every one is refused in one line naming the variable
and the rule (exit 2, nothing written), and nothing secret is ever shown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from core.generators import OpenAIChatGenerator
from core.generators.openai_chat import SERVER_MESSAGE_CHARS
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import Database
from testkit.counting import CountingGenerator
from tests.conftest import CliRun
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE

NESTED = "[" * 5_000 + "]" * 5_000


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CACHE_TTL_HOURS": "abc"}, "CACHE_TTL_HOURS=abc: Input should be a valid number"),
        ({"CACHE_TTL_HOURS": "0"}, "CACHE_TTL_HOURS=0: Input should be greater than 0"),
        ({"LLM_MAX_RETRIES": "-1"}, "LLM_MAX_RETRIES=-1: Input should be greater than or equal to 0"),
        ({"DATABASE_URL": "mysql://coach:s3cret@db/coach"}, "DATABASE_URL: mysql is not supported"),
        ({"MIGRATIONS_DATABASE_URL": "nonsense:s3cret"}, "MIGRATIONS_DATABASE_URL: not a database URL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL=loud: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT=xml: Input should be 'text' or 'json'"),
        ({"MODEL_PRICES": "{gpt"}, 'MODEL_PRICES={gpt: must be JSON like {"gpt-4.1": {"input": 2.0, "output": 8.0}}'),
        (
            {"MODEL_PRICES": '{"gpt-4.1": {"input": -2, "output": 8}}'},
            "MODEL_PRICES.gpt-4.1.input=-2: Input should be greater than or equal to 0",
        ),
        ({"CACHE_TTL_HOURS": "1e9"}, "CACHE_TTL_HOURS=1e9: Input should be less than or equal to 8784"),
        ({"CACHE_TTL_HOURS": "1e12"}, "CACHE_TTL_HOURS=1e12: Input should be less than or equal to 8784"),
        ({"CACHE_TTL_HOURS": "inf"}, "CACHE_TTL_HOURS=inf: Input should be a finite number"),
        ({"CACHE_TTL_HOURS": "nan"}, "CACHE_TTL_HOURS=nan: Input should be a finite number"),
        ({"LLM_TIMEOUT_SECONDS": "inf"}, "LLM_TIMEOUT_SECONDS=inf: Input should be a finite number"),
        ({"LLM_SCHEMA": "loose"}, "LLM_SCHEMA=loose: Input should be 'strict' or 'full'"),
        ({"LLM_TOKEN_CAP_PARAMETER": "max"}, "LLM_TOKEN_CAP_PARAMETER=max: Input should be 'max_completion_tokens' or"),
        ({"LLM_TEMPERATURE": "3"}, "LLM_TEMPERATURE=3: Input should be less than or equal to 2"),
        ({"OPENAI_API_KEY": "sk-t\u00e9st"}, "OPENAI_API_KEY: must be printable ASCII with no spaces"),
        ({"OPENAI_API_KEY": "\u201csk-test\u201d"}, "OPENAI_API_KEY: must be printable ASCII with no spaces"),
        ({"OPENAI_BASE_URL": "127.0.0.1:8000/v1"}, "OPENAI_BASE_URL=127.0.0.1:8000/v1: must be an http://"),
        ({"MODEL_PRICES": NESTED}, "MODEL_PRICES=" + "[" * 59 + "…: is nested too deeply"),
        (
            {"MODEL_PRICES": '{"gpt-4.1": {"input": Infinity, "output": 8}}'},
            "MODEL_PRICES.gpt-4.1.input=inf: Input should be a finite number",
        ),
        (
            {"MODEL_PRICES": '{"gpt-4.1": {"input": 1e308, "output": 8}}'},
            "MODEL_PRICES.gpt-4.1.input=1e+308: Input should be less than or equal to 10000",
        ),
        (
            {"MODEL_PRICES": json.dumps({f"model-{i}": {"input": 1, "output": 2} for i in range(2_000)})},
            "must be at most 64 KB of JSON",
        ),
        ({"ALERT_WEBHOOK_URL": "hooks.slack.com/services/T1/B2/s3cret"}, "ALERT_WEBHOOK_URL: must be an http://"),
        ({"ALERT_HIT_RATE_SHARE": "1.5"}, "ALERT_HIT_RATE_SHARE=1.5: Input should be less than or equal to 1"),
        (
            {"DATABASE_URL": "postgresql://coach:Pg@Pw_Z9q@127.0.0.1:5432/coach"},
            "DATABASE_URL: its host part holds an '@': write an '@' in the password as %40",
        ),
    ],
)
def test_a_bad_setting_is_one_short_line_naming_it(
    cli: Callable[..., CliRun], tmp_path: Path, env: dict[str, str], says: str, profile_file: Path
) -> None:
    url = env.pop("DATABASE_URL", f"sqlite:///{tmp_path}/coach.db")
    for args in (["stats"], ["generate", "--user-id", "u1", "--profile", str(profile_file)]):
        done = cli(url, *args, **env)
        assert (done.code, done.stdout) == (2, "")
        [line] = done.stderr.splitlines()
        assert line.startswith("error: configuration: ") and says in line
        assert len(line) < 300
        for secret in ("t\u00e9st", "Pw_Z9q", "sk-test", "s3cret"):
            assert secret not in line
    assert not (tmp_path / "coach.db").exists()


def test_the_generator_is_described_without_the_base_urls_password() -> None:
    settings = Settings(openai_api_key="sk-test", openai_base_url="http://user:pa55word@127.0.0.1:8000/v1")
    assert settings.describe_generator() == "OpenAI gpt-4o-mini at http://127.0.0.1:8000/v1"
    assert Settings(openai_api_key="sk-test").describe_generator() == "OpenAI gpt-4o-mini at https://api.openai.com/v1"


def test_the_sidebar_never_shows_the_base_urls_password(
    app_test: Callable[..., AppTest], tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    with_password = fake_openai.base_url.replace("http://", "http://user:pa55word@")
    app = app_test(f"sqlite:///{tmp_path}/coach.db", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=with_password)
    app.run()
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    assert f"{urlsplit(fake_openai.base_url).port}/v1" in sidebar  # the server is named (escaped markdown)
    assert "pa55word" not in sidebar and "user:" not in sidebar and "sk-test" not in sidebar


@pytest.mark.parametrize(
    "echoed", ["sk\\u002dtest-secret-key-0123", "sk%2Dtest-secret-key-0123", "sk-test-secret-key-0123"]
)
def test_an_api_key_the_server_echoes_is_never_shown_however_it_is_escaped(
    engine: Engine, fake_openai: FakeOpenAI, echoed: str
) -> None:
    key = "sk-test-secret-key-0123"
    # The key across the cut that keeps a message to one line: not even its start may show.
    said_before = "Incorrect API key provided: "
    message = said_before + "x" * (SERVER_MESSAGE_CHARS - len(said_before) - 12) + echoed
    fake_openai.reset(Behaviour(mode="status", status=401, message=message))
    generator = OpenAIChatGenerator(
        api_key=key,
        model="gpt-test",
        base_url=fake_openai.base_url,
        timeout_seconds=5,
        max_retries=0,
        max_completion_tokens=16_000,
    )
    service = ProgramService(engine=engine, generator=generator)
    with pytest.raises(GenerationFailed) as failed:
        service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    said = str(failed.value)
    assert "HTTP 401" in said
    for piece in ("sk-test", "secret-key", "sk\\u002d", "sk%2D"):
        assert piece not in said


def test_a_service_built_without_settings_waits_and_keeps_entries_as_the_app_does_unconfigured(
    app_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    generator = CountingGenerator()
    direct = ProgramService(engine=app_engine, generator=generator)
    app = ProgramService.from_settings(Settings(_env_file=None), database=Database(app_engine), generator=generator)
    configured = ("ttl", "lock_wait_seconds", "lease_seconds", "database_wait_seconds", "key_secret")
    for name in (*configured, "serve_other_generators", "repair_attempts"):
        assert getattr(direct, name) == getattr(app, name), name
    assert direct.lock_wait_seconds == 510  # the LLM's worst case: 2 tries x 2 attempts x 120 s, + 30 s
