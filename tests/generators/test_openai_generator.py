"""The OpenAI path end to end: the real SDK against a local OpenAI-compatible server."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from time import perf_counter, sleep
from typing import Any

import jsonschema
import openai
import pytest
from sqlalchemy import Engine, select

from core.contract.fit import validate_program
from core.contract.models import parse_onboarding
from core.contract.partial_program import ProgramSoFar
from core.generators import OpenAIChatGenerator, make_generator, openai_schema, startup_warning
from core.generators.offline import build_program
from core.generators.openai_schema import numbered, program_response_format
from core.operations import monitoring
from core.operations.fit_report import FitReport, fit_by_generator
from core.serving.results import GenerationFailed, GenerationResult
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.schema import ai_coach_cache, generation_events, training_programs
from tests import openai_strict
from tests.fake_openai import BREAKING, COMPLETION_TOKENS, PROMPT_TOKENS, Behaviour, FakeOpenAI
from tests.helpers import PROFILE, count_rows

API_KEY = "sk-test-not-a-secret"


def openai_generator(fake: FakeOpenAI, *, model: str = "gpt-test", timeout: float = 30, retries: int = 0) -> Any:
    # The timeout bounds the whole stream: a loaded machine may take seconds to read a paid program.
    return OpenAIChatGenerator(
        api_key=API_KEY,
        model=model,
        base_url=fake.base_url,
        timeout_seconds=timeout,
        max_retries=retries,
        max_completion_tokens=Settings().llm_max_completion_tokens,
    )


def openai_service(engine: Engine, fake: FakeOpenAI, *, model: str = "gpt-test", **options: Any) -> ProgramService:
    return ProgramService(engine=engine, generator=openai_generator(fake, model=model, **options), lock_wait_seconds=30)


def test_a_good_answer_is_validated_cached_and_saved_with_token_usage(engine: Engine, fake_openai: FakeOpenAI) -> None:
    service = openai_service(engine, fake_openai)
    result = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True)

    assert result.cache_hit is False and result.model == "gpt-test"
    assert result.program["duration_weeks"] == 8 and len(result.program["weeks"]) == 8
    request = fake_openai.requests[0]
    assert request["model"] == "gpt-test"
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert request["response_format"]["json_schema"]["schema"]["required"][0] == "title"
    with engine.connect() as connection:
        row = connection.execute(training_programs.select()).one()
    assert (row.prompt_tokens, row.completion_tokens, row.model) == (420, 1800, "gpt-test")

    again = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True)
    assert again.cache_hit and fake_openai.calls == 1


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        (Behaviour(mode="malformed"), "malformed JSON"),
        (Behaviour(mode="wrong_shape"), "has 4 sessions, days_per_week is 3"),
        (Behaviour(mode="status", status=500), "HTTP 500"),
        (Behaviour(mode="truncated"), "cut off at max_completion_tokens=16000"),
        (Behaviour(mode="content_filter"), "content filter stopped the answer"),
        (Behaviour(mode="refusal"), "the LLM refused: I can't help with that."),
        (Behaviour(mode="status", status=429, retry_after="0"), "HTTP 429"),
        (Behaviour(mode="hang"), "timeout"),
        (Behaviour(mode="cut"), "the connection to the LLM server dropped before the answer was complete"),
        # Each chunk comes in time, but the whole answer would take seconds: the timeout is the answer's.
        (Behaviour(tokens_per_second=200), "timeout"),
        # Half the answer, then only comments, which reach no check between chunks: the timeout still holds.
        (Behaviour(mode="keepalive"), "timeout"),
    ],
)
def test_a_bad_answer_caches_and_saves_nothing(
    engine: Engine, fake_openai: FakeOpenAI, behaviour: Behaviour, says: str
) -> None:
    fake_openai.reset(behaviour)
    # Short only where the timeout is the point: a loaded machine may take over half a second
    # to answer, and a timeout would then hide the failure under test.
    timed = behaviour.mode in ("hang", "keepalive") or behaviour.tokens_per_second is not None
    service = openai_service(engine, fake_openai, timeout=0.5 if timed else 30)
    with pytest.raises(GenerationFailed) as error:
        service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    assert says in str(error.value)
    assert "Nothing was cached or saved" in str(error.value) and "\n" not in str(error.value)
    assert count_rows(engine, ai_coach_cache) == 0
    assert count_rows(engine, training_programs) == 0
    # The single-flight lock was released: the next request reaches the LLM again.
    fake_openai.reset()
    again = openai_service(engine, fake_openai)  # with time for a whole answer
    assert again.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False).cache_hit is False


@pytest.mark.parametrize("rule", sorted(BREAKING))
def test_an_answer_that_does_not_fit_the_client_is_refused_naming_the_rule_and_its_tokens_counted(
    engine: Engine, fake_openai: FakeOpenAI, rule: str
) -> None:
    fake_openai.reset(Behaviour(breaks=rule))
    client = {**PROFILE, "injuries": "lower back"}
    with pytest.raises(GenerationFailed) as error:
        openai_service(engine, fake_openai).generate(user_id="u1", onboarding_responses=client, has_paid_access=False)
    # Sent back once with what failed (LLM_REPAIR_ATTEMPTS=1), broken again: refused.
    assert f"invalid (2 attempts): invalid training program for this client (rules broken: {rule})" in str(error.value)
    assert "Nothing was cached or saved" in str(error.value)
    assert count_rows(engine, ai_coach_cache) == 0 and count_rows(engine, training_programs) == 0
    with engine.connect() as connection:
        event = connection.execute(select(generation_events)).one()
    assert (event.outcome, event.attempts, event.rules_broken) == ("error", 2, rule)
    assert (event.prompt_tokens, event.completion_tokens) == (2 * PROMPT_TOKENS, 2 * COMPLETION_TOKENS)
    assert fit_by_generator(engine) == [FitReport(event.generator_version, "gpt-test", refused=1, by_rule={rule: 1})]


def test_a_program_that_does_not_fit_is_sent_back_with_what_failed_and_the_repaired_one_cached_once(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(breaks="session_length", mends=True))
    result = openai_service(engine, fake_openai).generate(
        user_id="u1", onboarding_responses=PROFILE, has_paid_access=False
    )
    first, repair = fake_openai.requests
    assert repair["messages"][:2] == first["messages"]  # the same conversation, then
    assert json.loads(repair["messages"][2]["content"])["weeks"][0]["sessions"][0]["duration_minutes"] == 240
    assert "weeks.0.sessions.0.duration_minutes: is 240, the client has 45 minutes" in repair["messages"][3]["content"]
    assert result.program["weeks"][0]["sessions"][0]["duration_minutes"] <= 45
    assert count_rows(engine, ai_coach_cache) == 1 and count_rows(engine, training_programs) == 1
    with engine.connect() as connection:
        event = connection.execute(select(generation_events)).one()
        row = connection.execute(select(training_programs)).one()
    assert (event.outcome, event.attempts, event.rules_broken) == ("miss", 2, "session_length")
    # Both attempts were billed, and both are counted, on the event and on the program.
    assert (event.prompt_tokens, row.completion_tokens) == (2 * PROMPT_TOKENS, 2 * COMPLETION_TOKENS)
    assert fit_by_generator(engine)[0].repaired == 1


def test_with_no_repair_attempts_a_program_that_does_not_fit_is_refused_at_once(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(breaks="goal", mends=True))
    service = replace(openai_service(engine, fake_openai), repair_attempts=0)
    with pytest.raises(GenerationFailed, match=r"the generated program is invalid: invalid training program"):
        service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    assert fake_openai.calls == 1


def test_the_answer_is_streamed_and_what_is_complete_is_shown_well_before_the_end(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    # About 1,800 tokens of 4 characters at 500 a second: the whole answer takes about 3.6 s,
    # the first session is complete after about 240 (0.5 s). Slow enough that the server's
    # pace, not a loaded machine's parsing, decides when each part arrives.
    fake_openai.reset(Behaviour(tokens_per_second=500))
    heard: list[tuple[float, ProgramSoFar]] = []
    started = perf_counter()
    result = openai_service(engine, fake_openai).generate(
        user_id="u1",
        onboarding_responses=PROFILE,
        has_paid_access=False,
        on_progress=lambda so_far: heard.append((perf_counter() - started, so_far)),
    )
    took = perf_counter() - started

    request = fake_openai.requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    first_session = next(at for at, so_far in heard if so_far.sessions)
    assert first_session < took / 2, (first_session, took)
    counts = [so_far.sessions for _, so_far in heard]
    assert counts == sorted(counts) and counts[-1] >= 9  # reported as sessions complete
    assert len(heard) <= took * 10 + 1  # at most ten a second
    final = heard[-1][1]
    assert final.title == result.program["title"]
    for week in final.weeks:  # the sessions shown are the program's own
        assert week["sessions"] == result.program["weeks"][week["week"] - 1]["sessions"][: len(week["sessions"])]
    # What is cached and saved is the whole validated answer, with the usage of the stream's last chunk.
    with engine.connect() as connection:
        row = connection.execute(training_programs.select()).one()
        cached = connection.execute(select(ai_coach_cache.c.data)).scalar_one()
    assert row.program == result.program == cached
    assert (row.prompt_tokens, row.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


@pytest.mark.parametrize("mode", ["truncated", "content_filter", "malformed", "wrong_shape", "cut"])
def test_a_stream_that_fails_after_showing_sessions_caches_and_saves_nothing(
    engine: Engine, fake_openai: FakeOpenAI, mode: str
) -> None:
    # Paced, as a model writes: what is complete is shown as it arrives (at most ten times a second).
    fake_openai.reset(Behaviour(mode=mode, tokens_per_second=2000))
    heard: list[ProgramSoFar] = []
    with pytest.raises(GenerationFailed) as error:
        replace(openai_service(engine, fake_openai), repair_attempts=0).generate(
            user_id="u1", onboarding_responses=PROFILE, has_paid_access=False, on_progress=heard.append
        )
    assert "Nothing was cached or saved" in str(error.value)
    if mode in ("truncated", "wrong_shape", "cut"):
        assert heard and heard[-1].sessions > 0  # it was shown as written, and still not kept
    assert count_rows(engine, ai_coach_cache) == 0
    assert count_rows(engine, training_programs) == 0
    with engine.connect() as connection:
        failed = connection.execute(
            select(generation_events.c.prompt_tokens, generation_events.c.completion_tokens)
        ).one()
    # A stream cut off never got to its usage chunk: no tokens are invented for it.
    assert tuple(failed) == ((None, None) if mode == "cut" else (PROMPT_TOKENS, COMPLETION_TOKENS))


def test_only_the_request_that_generates_is_told_the_progress_a_waiter_says_it_waits(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(delay_seconds=0.5, tokens_per_second=4000))
    service = openai_service(engine, fake_openai)
    told: dict[str, list[str]] = {"first": [], "second": []}

    def ask(who: str) -> GenerationResult:
        return service.generate(
            user_id="u1",
            onboarding_responses=PROFILE,
            has_paid_access=False,
            on_generating=lambda reason: told[who].append("generating"),
            on_waiting=lambda reason: told[who].append(f"waiting ({reason})"),
            on_progress=lambda so_far: told[who].append("progress"),
        )

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, "first")
        while not fake_openai.requests:  # the first holds the lease once it has asked the LLM
            sleep(0.01)
        second = pool.submit(ask, "second")
        results = [first.result(), second.result()]
    assert fake_openai.calls == 1 and [r.cache_hit for r in results] == [False, True]
    assert told["first"][0] == "generating" and set(told["first"][1:]) == {"progress"}
    assert told["second"] == ["waiting (first_generation)"]


def test_the_sdk_retries_a_429_that_says_when_to_retry(engine: Engine, fake_openai: FakeOpenAI) -> None:
    fake_openai.reset(Behaviour(fail_first=1, status=429, retry_after="0"))
    result = openai_service(engine, fake_openai, retries=2).generate(
        user_id="u1", onboarding_responses=PROFILE, has_paid_access=False
    )
    assert result.training_program_id is not None
    assert fake_openai.calls == 2


@pytest.mark.parametrize("model", ["gpt-4o-mini", "ft:gpt-4o-mini-2024-07-18:acme::abc123"])
def test_the_request_sent_is_one_openai_accepts_in_strict_mode(
    engine: Engine, fake_openai: FakeOpenAI, model: str
) -> None:
    """The exact response_format sent, held against OpenAI's documented Structured Outputs
    rules (OpenAI's guide, "Supported schemas", and its SDK's strict-schema validator), as
    tests/openai_strict.py checks them: a json_schema `name` matching ^[a-zA-Z0-9_-]{1,64}$
    and `strict: true`; an object root, not anyOf; every node with `type`, `anyOf` or
    `$ref`; every object with `additionalProperties: false` and every property in
    `required`; only supported keywords (strings: pattern, format; numbers: multipleOf,
    (exclusive) minimum and maximum; arrays: items, minItems, maxItems); at most 5,000
    properties, 10 levels of objects, 1,000 enum values and 120,000 characters of names and
    values. Fine-tuned models also refuse pattern, format, minimum, maximum, multipleOf,
    minItems and maxItems; minLength and maxLength are refused by both."""
    openai_service(engine, fake_openai, model=model).generate(
        user_id="u1", onboarding_responses=PROFILE, has_paid_access=True
    )
    sent = fake_openai.requests[0]
    assert openai_strict.violations(sent["response_format"], fine_tuned=model.startswith("ft:")) == []
    assert sent["max_completion_tokens"] == 16_000
    # The bounds left out are stated in words, for the model to follow.
    schema = sent["response_format"]["json_schema"]["schema"]
    assert "at most 120 characters" in schema["properties"]["title"]["description"]  # the contract's own
    # The profile's shape is fixed in the request: 8 weeks of 3 sessions, numbered by us.
    weeks = schema["properties"]["weeks"]
    assert schema["properties"]["days_per_week"]["enum"] == [3] and schema["properties"]["duration_weeks"]["enum"] == [
        8
    ]
    assert "week" not in weeks["items"]["properties"]
    sessions = weeks["items"]["properties"]["sessions"]
    if model.startswith("ft:"):
        assert "exactly 8 items" in weeks["description"] and "exactly 3 items" in sessions["description"]
    else:
        assert (weeks["minItems"], weeks["maxItems"], sessions["minItems"], sessions["maxItems"]) == (8, 8, 3, 3)


def _valid_format() -> dict[str, Any]:
    return program_response_format("gpt-test", parse_onboarding(PROFILE), True)


def _schema(rf: dict[str, Any]) -> dict[str, Any]:
    return rf["json_schema"]["schema"]


MUTATIONS = {
    "enum without type": lambda rf: _schema(rf)["properties"]["goal"].pop("type"),
    "open object": lambda rf: _schema(rf).update(additionalProperties=True),
    "optional property": lambda rf: _schema(rf)["required"].remove("summary"),
    "minLength": lambda rf: _schema(rf)["properties"]["title"].update(minLength=1),
    "allOf": lambda rf: _schema(rf)["properties"].update(extra={"allOf": [{"type": "string"}]}),
    "bad name": lambda rf: rf["json_schema"].update(name="training program!"),
    "not strict": lambda rf: rf["json_schema"].update(strict=False),
    "root anyOf": lambda rf: rf["json_schema"].update(schema={"anyOf": [{"type": "object"}]}),
    "too deep": lambda rf: _schema(rf)["properties"].update(deep=_nested(11)),
    "too many enum values": lambda rf: _schema(rf)["properties"]["goal"].update(enum=[f"g{i}" for i in range(1001)]),
}


def _nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"x": node}, "required": ["x"], "additionalProperties": False}
    return node


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_strict_rules_checker_catches_each_kind_of_violation(mutation: str) -> None:
    response_format = _valid_format()
    assert openai_strict.violations(response_format) == []
    MUTATIONS[mutation](response_format)
    assert openai_strict.violations(response_format) != []


def test_fine_tuned_models_are_held_to_their_narrower_rules() -> None:
    base = _valid_format()
    assert "minimum" in json.dumps(base) and openai_strict.violations(base, fine_tuned=True) != []


def test_the_local_server_refuses_what_openai_refuses_and_the_reason_reaches_the_coach(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    bad = _valid_format()
    MUTATIONS["enum without type"](bad)
    client = openai.OpenAI(api_key=API_KEY, base_url=fake_openai.base_url, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-test", messages=[], response_format=bad)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_json_schema"
    assert "('properties', 'goal')" in refused.value.message

    # The server's own message, one line and without the key, is what the service reports.
    said = "Invalid schema for response_format 'training_program': In context=('properties', 'goal'), schema must\n"
    fake_openai.reset(Behaviour(mode="status", status=400, message=said + f"have a 'type' key ({API_KEY})"))
    with pytest.raises(GenerationFailed) as error:
        openai_service(engine, fake_openai).generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    message = str(error.value)
    assert "HTTP 400: Invalid schema for response_format 'training_program'" in message
    assert "schema must have a 'type' key" in message and API_KEY not in message and "\n" not in message


@pytest.mark.parametrize("mode", ["truncated", "content_filter", "refusal", "malformed", "wrong_shape"])
def test_every_billed_token_is_counted_failed_generations_included(
    engine: Engine, fake_openai: FakeOpenAI, mode: str
) -> None:
    # One attempt: a repair's tokens are counted in test_a_program_that_does_not_fit_is_sent_back_….
    service = replace(openai_service(engine, fake_openai), repair_attempts=0)
    service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    fake_openai.reset(Behaviour(mode=mode))
    with pytest.raises(GenerationFailed):
        service.generate(user_id="u2", onboarding_responses=PROFILE, has_paid_access=False)

    with engine.connect() as connection:
        failed = connection.execute(
            select(generation_events.c.prompt_tokens, generation_events.c.completion_tokens).where(
                generation_events.c.outcome == "error"
            )
        ).one()
    assert tuple(failed) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    prices = Settings(model_prices={"gpt-test": {"input": 1.0, "output": 2.0}})
    costs = monitoring.costs(monitoring.usage_by_generator(engine), prices)
    one_call = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 2.0) / 1_000_000
    assert costs.spent == pytest.approx(2 * one_call)  # the success and the failure
    assert costs.llm_calls == 2
    assert costs.per_generation == pytest.approx(one_call)  # the what-if's price of a call


def test_the_output_cap_holds_the_largest_valid_program() -> None:
    """Roughly 4 bytes of JSON a token: the cap must fit the largest program the contract
    allows a profile to ask for (8 weeks of 7 sessions with every piece of equipment)."""
    largest = parse_onboarding(
        {
            "goal": "strength",
            "experience_level": "advanced",
            "days_per_week": 7,
            "session_minutes": 180,
            "equipment": ["barbell", "dumbbells", "kettlebells", "machines", "pull_up_bar", "cardio_machine"],
            "injuries": "x" * 500,
            "notes": "y" * 1000,
        }
    )
    size = len(json.dumps(build_program(largest, True)))
    assert size / 4 < Settings().llm_max_completion_tokens


def test_a_server_that_does_not_serve_the_model_is_named_at_start(fake_openai: FakeOpenAI) -> None:
    fake_openai.reset(Behaviour(served_models=("llama3.1:8b", "qwen2.5:7b")))
    warning = startup_warning(openai_generator(fake_openai, model="gpt-4o-mini"))
    assert warning == "the LLM server does not list OPENAI_MODEL=gpt-4o-mini; it serves: llama3.1:8b, qwen2.5:7b"
    fake_openai.reset(Behaviour(served_models=("gpt-4o-mini",)))
    assert startup_warning(openai_generator(fake_openai, model="gpt-4o-mini")) is None


def _answer_to(profile: dict[str, Any], paid: bool) -> dict[str, Any]:
    """The offline coach's program for `profile`, as an answer to the request: its weeks
    unnumbered and its sessions without days."""
    program = build_program(parse_onboarding(profile), paid)
    weeks = [{"theme": w["theme"], "sessions": [_dayless(s) for s in w["sessions"]]} for w in program["weeks"]]
    return {**program, "weeks": weeks}


def _dayless(session: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in session.items() if k != "day"}


BREAKS_THE_SHAPE = {
    "a session too few": lambda a: a["weeks"][0]["sessions"].pop(),
    "a week too few": lambda a: a["weeks"].pop(),
    "other days a week": lambda a: a.update(days_per_week=a["days_per_week"] % 7 + 1),
    "another duration": lambda a: a.update(duration_weeks=a["duration_weeks"] + 1),
    "a week number asked for": lambda a: a["weeks"][0].update(week=1),
    "a rambling note": lambda a: a["weeks"][0]["sessions"][0]["exercises"][0].update(notes="x" * 161),
}


def _longest_allowed(answer: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`answer` with every session as long as the schema lets it be: as many exercises as it
    allows, each with its most sets and longest rests, and sets of 20 repetitions."""
    exercises = schema["properties"]["weeks"]["items"]["properties"]["sessions"]["items"]["properties"]["exercises"]
    most = exercises["items"]["properties"]
    for week in answer["weeks"]:
        for session in week["sessions"]:
            first = session["exercises"][0]
            longest = {**first, "sets": most["sets"]["maximum"], "rest_seconds": most["rest_seconds"]["maximum"]}
            session["exercises"] = [{**longest, "reps": "20"}] * exercises["maxItems"]
    return answer


@pytest.mark.parametrize("days", range(1, 8))
@pytest.mark.parametrize("paid", [False, True])
@pytest.mark.parametrize("minutes", [15, 20, 45, 180])
def test_every_answer_the_full_request_allows_is_a_valid_program_that_fits(days: int, paid: bool, minutes: int) -> None:
    """What the service checks beyond the contract is in the request itself, for a server that
    enforces full JSON Schema (llama.cpp's and vLLM's grammars): an answer it lets through,
    even its longest sessions, is a valid program that fits the client once numbered, and each
    way of breaking the shape is refused by it."""
    profile = {**PROFILE, "days_per_week": days, "session_minutes": minutes}
    schema = program_response_format("smollm2", parse_onboarding(profile), paid, flavour="full")
    assert schema["json_schema"]["strict"] is False  # not OpenAI's subset: it keeps string lengths
    validator = jsonschema.Draft202012Validator(schema["json_schema"]["schema"])
    answer = _longest_allowed(_answer_to(profile, paid), schema["json_schema"]["schema"])
    assert list(validator.iter_errors(answer)) == []
    validate_program(numbered(answer), parse_onboarding(profile), paid)
    for name, breaking in BREAKS_THE_SHAPE.items():
        broken = copy.deepcopy(answer)
        breaking(broken)
        assert list(validator.iter_errors(broken)) != [], name


@pytest.mark.parametrize(
    ("injuries", "asked"),
    [
        ("sore left knee", {"knee": "Knee"}),
        ("knee and lower back", {"back": "Back", "knee": "Knee"}),
        ("asthma", {"limitation": "Asthma"}),
    ],
)
@pytest.mark.parametrize("flavour", ["strict", "full"])
def test_a_reported_injury_is_asked_for_as_a_note_that_begins_with_its_name(
    injuries: str, asked: dict[str, str], flavour: openai_schema.SchemaFlavour
) -> None:
    """A small model asked for safety notes in general wrote about warming up and never named
    the knee: the request asks for a note on each thing the injury rule wants named, beginning
    with its word, and the notes go first in safety_notes. What the model writes after the
    word is its own; the rule is not loosened."""
    profile = parse_onboarding({**PROFILE, "injuries": injuries})
    response_format = program_response_format("gpt-test", profile, False, flavour=flavour)
    if flavour == "strict":
        assert openai_strict.violations(response_format) == []
    schema = response_format["json_schema"]["schema"]
    assert "injury_notes" in schema["required"]  # asked for before the weeks, which are written after it
    assert list(schema["properties"]).index("injury_notes") < list(schema["properties"]).index("weeks")
    validator = jsonschema.Draft202012Validator(schema["properties"]["injury_notes"])
    notes = {key: f"{word}: keep every movement pain-free" for key, word in asked.items()}
    assert list(validator.iter_errors(notes)) == []
    answer = {**_answer_to(PROFILE, False), "safety_notes": ["Warm up first."], "injury_notes": notes}
    program = validate_program(numbered(answer), profile, False)
    assert program["safety_notes"] == [*notes.values(), "Warm up first."]
    key, word = next(iter(asked.items()))
    for note in ("keep every movement pain-free", f"{word}: short", f"{word}: a line\nbreak in it", "x" * 200):
        assert list(validator.iter_errors({**notes, key: note})) != [], note
    assert list(validator.iter_errors({k: v for k, v in notes.items() if k != key})) != []


def test_the_full_request_bounds_every_string_and_list_so_none_runs_to_the_cap() -> None:
    profile = parse_onboarding({**PROFILE, "days_per_week": 7})
    schema = program_response_format("smollm2", profile, True, flavour="full")["json_schema"]["schema"]
    unbounded: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node["type"] == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if node["type"] == "array":
            if "maxItems" not in node:
                unbounded.append(path)
            walk(node["items"], path + "[]")
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")

    walk(schema, "")
    assert unbounded == []


def test_the_generator_identity_changes_with_whatever_the_request_asks(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def version(**options: Any) -> str:
        chosen = {
            "api_key": API_KEY,
            "model": "gpt-test",
            "base_url": fake_openai.base_url,
            "timeout_seconds": 5,
            "max_retries": 0,
            "max_completion_tokens": 16_000,
        }
        return OpenAIChatGenerator(**(chosen | options)).identity.version

    base = version()
    assert version() == base  # nothing else moves it
    others = [version(model="gpt-other"), version(temperature=0), version(schema="full")]
    monkeypatch.setitem(openai_schema.ANSWER_LIMITS, "summary", {"maxLength": 500})
    others.append(version(schema="full"))
    assert len({base, *others}) == 1 + len(others)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({}, "max_completion_tokens"),  # OpenAI: its reasoning models refuse max_tokens
        ({"openai_base_url": "http://127.0.0.1:11434/v1"}, "max_tokens"),  # Ollama drops the other
        (
            {"openai_base_url": "http://127.0.0.1:8000/v1", "llm_token_cap_parameter": "max_completion_tokens"},
            "max_completion_tokens",
        ),
    ],
)
def test_the_cap_goes_by_the_name_the_server_takes(settings: dict[str, Any], name: str) -> None:
    assert Settings(**settings).token_cap_parameter == name


@pytest.mark.parametrize("chosen", [None, "max_completion_tokens"])
def test_the_cap_is_sent_under_that_name_alone(engine: Engine, fake_openai: FakeOpenAI, chosen: str | None) -> None:
    settings = Settings(
        openai_api_key=API_KEY,
        openai_base_url=fake_openai.base_url,
        llm_schema="strict",  # the stand-in holds requests to OpenAI's rules
        llm_token_cap_parameter=chosen,  # type: ignore[arg-type]
    )
    ProgramService(engine=engine, generator=make_generator(settings)).generate(
        user_id="u1", onboarding_responses=PROFILE, has_paid_access=False
    )
    request = fake_openai.requests[0]
    sent = [name for name in ("max_tokens", "max_completion_tokens") if name in request]
    assert sent == [chosen or "max_tokens"] and request[sent[0]] == 16_000


def test_the_model_check_understands_ollamas_name_and_tag(fake_openai: FakeOpenAI) -> None:
    fake_openai.reset(Behaviour(served_models=("llama3.2:latest", "qwen2.5:7b")))
    assert startup_warning(openai_generator(fake_openai, model="llama3.2")) is None
    assert startup_warning(openai_generator(fake_openai, model="qwen2.5:7b")) is None
    assert "OPENAI_MODEL=qwen2.5;" in (startup_warning(openai_generator(fake_openai, model="qwen2.5")) or "")


def test_a_server_that_cannot_do_structured_output_is_named_as_the_likely_cause(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    # llama-cpp-python's server answers a json_schema response format with a bare 500.
    fake_openai.reset(Behaviour(mode="status", status=500, message="Internal Server Error"))
    with pytest.raises(GenerationFailed) as error:
        openai_service(engine, fake_openai).generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    message = str(error.value)
    assert "HTTP 500: Internal Server Error (the server may not support a json_schema response format" in message
    assert "\n" not in message
