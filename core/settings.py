"""Configuration from environment variables (and a `.env` file if present)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.logs import LEVELS, LogFormat
from core.prices import DEFAULT_MODEL_PRICES, ModelPrice

DEFAULT_DATABASE_URL = "sqlite:///data/coach_cache.db"
# Bounds that keep every setting a value the code can compute with: an expiry a year ahead
# is still a date.
MAX_TTL_HOURS = 24 * 366
MAX_MODEL_PRICES_BYTES = 64 * 1024
SHOWN_VALUE_CHARS = 60
# A budget above a billion dollars is a typo.
MAX_BUDGET_USD = 1e9


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # A direct connection for migrations when DATABASE_URL goes through a transaction-mode
    # pooler (PgBouncer, Supavisor), which cannot run them; unset, DATABASE_URL migrates too.
    migrations_database_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    cache_ttl_hours: float = Field(default=24.0, gt=0, le=MAX_TTL_HOURS, allow_inf_nan=False)
    # Keys the cache key's digest (HMAC-SHA-256) so it cannot be reversed by trying answers.
    # Every instance must share it; changing it starts a new cache (old entries just expire).
    cache_key_secret: SecretStr | None = None
    # An entry made by another generator identity (model, prompt, rules): regenerate it, or
    # keep serving it until it expires.
    cache_on_generator_change: Literal["regenerate", "serve"] = "regenerate"
    # One attempt may take as long as the largest program takes to write: 16 k tokens at a
    # slow 150 tokens/s is about 110 s. Each retry can be billed again (a timed-out
    # generation usually still runs to its end on the server), hence one retry by default.
    llm_timeout_seconds: float = Field(default=120.0, gt=0, le=3600, allow_inf_nan=False)
    llm_max_retries: int = Field(default=1, ge=0, le=10)
    # A program that breaks the contract or a fit rule is sent back this many times, with what
    # failed, in the same conversation (core.repair); each attempt is billed.
    llm_repair_attempts: int = Field(default=1, ge=0, le=3)
    # The largest valid program (8 weeks x 7 sessions of 180 minutes, long notes) is about
    # 60 KB of JSON, about 15 k tokens.
    llm_max_completion_tokens: int = Field(default=16_000, ge=1_000, le=1_000_000)
    # Sent only when set (0 for the most repeatable answers); unset, the server's default
    # applies, and OpenAI's reasoning models accept no other.
    llm_temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    # How much of JSON Schema the server enforces: `strict` (OpenAI's subset, no string
    # lengths) or `full` (llama.cpp's and vLLM's grammars); unset, `full` exactly when
    # OPENAI_BASE_URL names another server.
    llm_schema: Literal["strict", "full"] | None = None
    # The request parameter that carries LLM_MAX_COMPLETION_TOKENS: OpenAI's reasoning models
    # refuse `max_tokens`, Ollama silently drops `max_completion_tokens` (ollama#7125) and
    # older llama.cpp builds ignore it; unset, `max_tokens` exactly when OPENAI_BASE_URL is set.
    llm_token_cap_parameter: Literal["max_completion_tokens", "max_tokens"] | None = None
    # USD per million tokens by model, for monitoring's spend and savings: MODEL_PRICES (JSON,
    # e.g. {"my-model": {"input": 1.0, "output": 2.0}}) adds models or overrides listed ones.
    model_prices: Annotated[dict[str, ModelPrice], NoDecode] = DEFAULT_MODEL_PRICES
    # USD the LLM may be billed per day and per month (00:00 UTC by the database's clock), as
    # the invoice counts it (core/operations/spend.py); unset, no limit. Once one is spent, a
    # generation gets the offline coach's program (BUDGET_EXCEEDED=offline) or none (refuse).
    llm_daily_budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)
    llm_monthly_budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)
    budget_exceeded: Literal["offline", "refuse"] = "offline"
    # How long a request waits for a concurrent identical generation; None derives it
    # from the LLM's own worst case so a waiter never gives up on a call still in flight.
    single_flight_wait_seconds: float | None = Field(default=None, gt=0, le=24 * 3600, allow_inf_nan=False)
    # All that one coach's request may wait on the database (a stalled server, a held lock),
    # over all its statements: then it goes on as if the database were down.
    database_wait_seconds: float = Field(default=5.0, gt=0, le=600, allow_inf_nan=False)
    # A generation's lease on its key, renewed three times per period while it runs: a
    # holder that dies blocks its key at most this long.
    generation_lease_seconds: float = Field(default=15.0, ge=0.5, le=600, allow_inf_nan=False)
    # A second identical click on "Generate program" this soon after the first one's request
    # was served is the rest of a double click: it shows that result, it does not generate.
    double_click_seconds: float = Field(default=1.0, ge=0, le=60, allow_inf_nan=False)
    # One line per request at INFO; WARNING keeps only problems. `json` for log shippers.
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    # Sign-in is optional; when on, only these e-mails may run destructive admin actions.
    admin_emails: Annotated[list[str], NoDecode] = []
    # Alerts (core/operations/alerts.py): where each one that starts firing or resolves is
    # POSTed, Slack-compatible. A secret: Slack's webhook URLs carry their token in the path.
    alert_webhook_url: SecretStr | None = None
    # How long a POST to it may take; a message not sent is sent again on the next check.
    alert_webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    # The dashboard's address, for the link to its monitoring page in each alert.
    dashboard_url: str | None = None
    # Below this share of its baseline (the same hour of the previous 7 days), the last
    # hour's hit rate fires, once the hour and the baseline each served this many requests.
    alert_hit_rate_share: float = Field(default=0.5, gt=0, le=1, allow_inf_nan=False)
    alert_hit_rate_min_requests: int = Field(default=100, ge=1, le=1_000_000)
    # Failed generations and cache read or write errors among the last 15 minutes' requests.
    alert_error_share: float = Field(default=0.05, gt=0, le=1, allow_inf_nan=False)
    alert_error_min_requests: int = Field(default=20, ge=1, le=1_000_000)
    # Programs refused by validation (no attempt passed) among the last hour's generations.
    alert_refusal_share: float = Field(default=0.1, gt=0, le=1, allow_inf_nan=False)
    alert_refusal_min_generations: int = Field(default=20, ge=1, le=1_000_000)
    # Cleanup is overdue when the oldest expired program entry expired this long ago.
    alert_cleanup_overdue_hours: float = Field(default=24.0, gt=0, le=MAX_TTL_HOURS, allow_inf_nan=False)
    # The spend alert fires at this share of LLM_DAILY_BUDGET_USD, before the guard bites at the budget.
    alert_spend_share: float = Field(default=0.8, gt=0, le=1, allow_inf_nan=False)

    @field_validator("database_url", "migrations_database_url")
    @classmethod
    def _use_psycopg3(cls, url: str | None) -> str | None:
        if url is None:
            return None
        # Plain postgres URLs would pick psycopg2, which is not installed.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                url = "postgresql+psycopg://" + url[len(prefix) :]
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError:
            raise ValueError("not a database URL (sqlite:///path or postgresql://user@host/db)") from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"{backend} is not supported (sqlite:///path or postgresql://user@host/db)")
        if "@" in (make_url(url).host or ""):
            # The value is not repeated: what looks like a host holds the end of a password.
            raise ValueError("its host part holds an '@': write an '@' in the password as %40")
        return url

    @field_validator("openai_api_key")
    @classmethod
    def _printable_key(cls, key: SecretStr | None) -> SecretStr | None:
        # An HTTP header is ASCII: a pasted curly quote or non-breaking space fails every call.
        if key is not None and not re.fullmatch(r"[\x21-\x7e]*", key.get_secret_value()):
            raise ValueError("must be printable ASCII with no spaces (check for a pasted quote or space)")
        return key

    @field_validator("openai_base_url", "dashboard_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not _is_http_url(url):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1")
        return url

    @field_validator("alert_webhook_url")
    @classmethod
    def _http_webhook(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and url.get_secret_value() and not _is_http_url(url.get_secret_value()):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://hooks.slack.com/services/…")
        return url if url is not None and url.get_secret_value() else None

    @field_validator("model_prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        if isinstance(value, str):
            if len(value.encode()) > MAX_MODEL_PRICES_BYTES:
                raise ValueError(f"must be at most {MAX_MODEL_PRICES_BYTES // 1024} KB of JSON")
            try:
                value = json.loads(value)
            except RecursionError:
                raise ValueError("is nested too deeply: a model's price is one level down") from None
            except ValueError:
                raise ValueError('must be JSON like {"gpt-4.1": {"input": 2.0, "output": 8.0}}') from None
        return value

    @field_validator("model_prices")
    @classmethod
    def _over_defaults(cls, prices: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        return {**DEFAULT_MODEL_PRICES, **prices}

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}")
        return level.upper()

    @field_validator("admin_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: object) -> object:
        if isinstance(value, str):
            return [e.strip().lower() for e in value.split(",") if e.strip()]
        return value

    @property
    def uses_openai(self) -> bool:
        return self.openai_api_key is not None and bool(self.openai_api_key.get_secret_value())

    @property
    def schema_flavour(self) -> Literal["strict", "full"]:
        return self.llm_schema or ("full" if self.openai_base_url else "strict")

    @property
    def token_cap_parameter(self) -> Literal["max_completion_tokens", "max_tokens"]:
        return self.llm_token_cap_parameter or ("max_tokens" if self.openai_base_url else "max_completion_tokens")

    def price_of(self, model: str) -> ModelPrice | None:
        """The model's price, or that of the longest listed name it is a dated snapshot of
        (`gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`); None if not listed."""
        if model in self.model_prices:
            return self.model_prices[model]
        bases = [name for name in self.model_prices if model.startswith(name + "-")]
        return self.model_prices[max(bases, key=len)] if bases else None

    @property
    def key_secret(self) -> bytes | None:
        secret = self.cache_key_secret.get_secret_value() if self.cache_key_secret else ""
        return secret.encode() or None

    @property
    def lock_wait_seconds(self) -> float:
        if self.single_flight_wait_seconds is not None:
            return self.single_flight_wait_seconds
        attempts = (self.llm_max_retries + 1) * (self.llm_repair_attempts + 1)
        return self.llm_timeout_seconds * attempts + 30

    def describe_database(self) -> str:
        """Where the data lives, for the UI: a file or a host, never a password."""
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite":
            return f"SQLite file {url.database or ':memory:'}"
        port = f":{url.port}" if url.port else ""
        return f"PostgreSQL {url.host or 'local socket'}{port}/{url.database}"

    def describe_webhook(self) -> str | None:
        """Where alerts go, for logs and the page: its scheme and host only. Its path and
        query may hold the token (Slack's /services/T…/B…/secret), its userinfo a password."""
        if self.alert_webhook_url is None:
            return None
        parts = urlsplit(self.alert_webhook_url.get_secret_value())
        return urlunsplit((parts.scheme, _host_and_port(parts), "", "", ""))

    def describe_generator(self) -> str:
        if not self.uses_openai:
            return "Offline rule-based generator"
        return f"OpenAI {self.openai_model} at {_without_userinfo(self.openai_base_url or 'https://api.openai.com/v1')}"


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number is refused here, not when the URL is used
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _host_and_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return f"{netloc}:{parts.port}" if parts.port else netloc


# Every setting at its default, the environment unread: what a part built without settings
# (a ProgramService in a test or the benchmark) is configured with, so that it gets the
# values the app gets unconfigured. Each default is defined once, on its field above.
DEFAULTS = Settings.model_construct()


def _without_userinfo(url: str) -> str:
    """The URL as the UI may show it: a `user:password@` in it is left out."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, _host_and_port(parts), parts.path, "", ""))


# Values never repeated in an error message: they may hold a password or a key.
_SECRET_FIELDS = (
    "database_url",
    "migrations_database_url",
    "openai_api_key",
    "cache_key_secret",
    "alert_webhook_url",
)


def describe_configuration_error(exc: ValidationError) -> str:
    """One line naming each bad environment variable, its value (unless secret) and the rule,
    e.g. `configuration: CACHE_TTL_HOURS=abc: Input should be a valid number`."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        # Inside a JSON value, the path to the bad part: MODEL_PRICES.gpt-4.1.input=-1.
        path = "".join(f".{part}" for part in error["loc"][1:])
        value = str(error["input"])
        if len(value) > SHOWN_VALUE_CHARS:
            value = value[: SHOWN_VALUE_CHARS - 1] + "…"
        shown = "" if field in _SECRET_FIELDS or error["type"] == "missing" else f"={value}"
        rule = error["msg"].removeprefix("Value error, ")
        problems.append(f"{field.upper()}{path}{shown}: {rule}")
    return "configuration: " + "; ".join(problems)
