"""The local server's Batch API, driven by the real SDK as `rollout` drives OpenAI's: what it
accepts and refuses, how a batch moves on with each poll, and what its files hold."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from core.contract.fit import program_weeks
from core.contract.models import parse_onboarding
from core.generators.openai_chat import SYSTEM_PROMPT
from core.generators.openai_schema import program_response_format
from tests.fake_openai import BatchBehaviour, Behaviour, FakeOpenAI
from tests.helpers import PROFILE

MODEL = "gpt-4o-mini"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_openai.base_url, api_key="test", max_retries=0)


def request_line(custom_id: str, *, days: int = 3, paid: bool = False, **changes: Any) -> dict[str, Any]:
    """One line as a rollout writes it: the generator's request, not streamed."""
    profile = {**PROFILE, "days_per_week": days}
    asked = {
        "onboarding_responses": profile,
        "has_paid_access": paid,
        "duration_weeks": program_weeks(paid),
    }
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": json.dumps(asked)}],
        "response_format": program_response_format(MODEL, parse_onboarding(profile), paid),
        "max_completion_tokens": 16000,
    }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body, **changes}


def upload(client: openai.OpenAI, lines: Sequence[dict[str, Any] | str], purpose: Any = "batch") -> str:
    text = "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line in lines)
    return client.files.create(file=("rollout.jsonl", text.encode()), purpose=purpose).id


def submit(client: openai.OpenAI, lines: Sequence[dict[str, Any] | str], **options: Any) -> Batch:
    return client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h", **options
    )


def poll_to_end(client: openai.OpenAI, batch_id: str) -> tuple[list[str], Batch]:
    """Every status the polls saw, and the batch as it ended; each poll moves a batch on, so a few do."""
    seen: list[str] = []
    for _ in range(10):
        batch = client.batches.retrieve(batch_id)
        seen.append(batch.status)
        if batch.status in TERMINAL:
            return seen, batch
    raise AssertionError(f"batch still {seen[-1]} after {len(seen)} polls")


def records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_completes_in_two_polls_and_answers_every_line_once_in_shuffled_order(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    lines = [request_line(f"séance-{n}", days=n, paid=n % 2 == 0) for n in range(1, 7)]
    created = submit(client, lines, metadata={"rollout": "7"})
    assert (created.status, created.endpoint, created.metadata) == (
        "validating",
        "/v1/chat/completions",
        {"rollout": "7"},
    )

    seen, done = poll_to_end(client, created.id)

    assert seen == ["in_progress", "completed"]
    assert done.request_counts is not None and done.request_counts.to_dict() == {
        "total": 6,
        "completed": 6,
        "failed": 0,
    }
    assert done.error_file_id is None and done.completed_at is not None and done.model == MODEL
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (6 * 420, 6 * 1800)
    output = records(client, done.output_file_id)
    order = [record["custom_id"] for record in output]
    assert sorted(order) == sorted(line["custom_id"] for line in lines)
    assert order != [line["custom_id"] for line in lines]
    for record in output:
        assert record["error"] is None and record["response"]["status_code"] == 200
        n = int(record["custom_id"].removeprefix("séance-"))
        program = json.loads(ChatCompletion.model_validate(record["response"]["body"]).choices[0].message.content or "")
        assert program["days_per_week"] == n and program["duration_weeks"] == program_weeks(n % 2 == 0)
    # The input comes back byte for byte, and the files say what they are.
    uploaded = client.files.retrieve(done.input_file_id)
    assert (uploaded.purpose, uploaded.status, uploaded.filename) == ("batch", "processed", "rollout.jsonl")
    assert [json.loads(line) for line in client.files.content(uploaded.id).text.splitlines()] == lines
    assert client.files.retrieve(done.output_file_id or "").purpose == "batch_output"
    # Batch lines are not live calls, and are counted apart.
    assert (fake_openai.calls, fake_openai.batch_lines_answered, len(fake_openai.batches)) == (0, 6, 1)
    assert [line["custom_id"] for line in fake_openai.batches[0].lines] == [line["custom_id"] for line in lines]


def test_a_batch_line_is_answered_as_the_same_request_made_live(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    line = request_line("one", days=4)
    live = client.chat.completions.create(**line["body"])
    _, done = poll_to_end(client, submit(client, [line]).id)

    batched = ChatCompletion.model_validate(records(client, done.output_file_id)[0]["response"]["body"])
    assert batched.choices[0].message.content == live.choices[0].message.content
    assert (fake_openai.calls, fake_openai.batch_lines_answered) == (1, 1)


@pytest.mark.parametrize(
    ("polls", "seen"),
    [(0, ["completed"]), (1, ["in_progress", "completed"]), (3, ["in_progress"] * 3 + ["completed"])],
)
def test_a_batch_stays_in_progress_for_as_many_polls_as_told(
    client: openai.OpenAI, fake_openai: FakeOpenAI, polls: int, seen: list[str]
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=polls))
    assert poll_to_end(client, submit(client, [request_line("a")]).id)[0] == seen


def test_failed_lines_go_to_the_error_file_and_a_bad_program_still_completes(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(
        batch=BatchBehaviour(
            fail_custom_ids=frozenset({"flaky"}), line_behaviours={"shape": Behaviour(mode="wrong_shape")}
        )
    )
    not_strict = request_line("loose")
    not_strict["body"]["response_format"]["json_schema"]["schema"]["properties"]["title"]["minLength"] = 1
    streamed = request_line("streamed")
    streamed["body"]["stream"] = True
    lines = [request_line("good"), request_line("flaky-1"), request_line("shape-1"), not_strict, streamed]

    _, done = poll_to_end(client, submit(client, lines).id)

    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.to_dict() == {
        "total": 5,
        "completed": 2,
        "failed": 3,
    }
    output = {record["custom_id"]: record["response"]["body"] for record in records(client, done.output_file_id)}
    assert set(output) == {"good", "shape-1"}
    wrong = json.loads(output["shape-1"]["choices"][0]["message"]["content"])
    assert len(wrong["weeks"][0]["sessions"]) == 4  # a 3-day program: HTTP 200, but not a valid program
    failed = {record["custom_id"]: record for record in records(client, done.error_file_id)}
    assert {cid: record["response"]["status_code"] for cid, record in failed.items()} == {
        "flaky-1": 500,
        "loose": 400,
        "streamed": 400,
    }
    assert failed["flaky-1"]["response"]["body"]["error"]["message"] == "injected failure"
    assert failed["loose"]["response"]["body"]["error"]["code"] == "invalid_json_schema"
    assert all(record["error"] is None and record["response"]["request_id"] for record in failed.values())
    assert fake_openai.batch_lines_answered == 5


@pytest.mark.parametrize(("outcome", "code"), [("expired", "batch_expired"), ("cancelled", "batch_cancelled")])
def test_a_batch_that_expires_or_is_cancelled_keeps_the_lines_that_ran(
    client: openai.OpenAI, fake_openai: FakeOpenAI, outcome: str, code: str
) -> None:
    fake_openai.reset(batch=BatchBehaviour(outcome=outcome, completed_before_end=2))
    lines = [request_line(f"k{n}") for n in range(5)]

    seen, done = poll_to_end(client, submit(client, lines).id)

    assert seen == ["in_progress", outcome]
    assert getattr(done, f"{outcome}_at") is not None and done.completed_at is None
    assert sorted(record["custom_id"] for record in records(client, done.output_file_id)) == ["k0", "k1"]
    not_run = records(client, done.error_file_id)
    assert sorted(record["custom_id"] for record in not_run) == ["k2", "k3", "k4"]
    assert {(record["response"], record["error"]["code"]) for record in not_run} == {(None, code)}
    assert fake_openai.batch_lines_answered == 2


def test_a_cancel_is_cancelling_then_cancelled_on_the_next_poll(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=5, completed_before_end=1))
    running = submit(client, [request_line("a"), request_line("b")])
    waiting = submit(client, [request_line("c")])
    assert client.batches.retrieve(running.id).status == "in_progress"

    assert client.batches.cancel(running.id).status == "cancelling"
    assert client.batches.cancel(waiting.id).status == "cancelling"  # still validating: nothing ran
    assert client.batches.cancel(running.id).status == "cancelling"  # asked twice, as a retried call does

    _, cancelled = poll_to_end(client, running.id)
    assert (cancelled.status, cancelled.cancelling_at is not None) == ("cancelled", True)
    assert len(records(client, cancelled.output_file_id)) == 1 and len(records(client, cancelled.error_file_id)) == 1
    _, untouched = poll_to_end(client, waiting.id)
    assert (untouched.status, untouched.output_file_id, len(records(client, untouched.error_file_id))) == (
        "cancelled",
        None,
        1,
    )
    with pytest.raises(openai.ConflictError, match="status 'cancelled'"):
        client.batches.cancel(running.id)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"endpoint": "/v1/embeddings"}, "'endpoint'"),
        ({"completion_window": "48h"}, "'completion_window'"),
        ({"input_file_id": "file-nope"}, "No such file"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "'metadata'"),
        ({"metadata": {"k": "v" * 513}}, "'metadata'"),
    ],
)
def test_a_create_openai_refuses_is_refused_with_its_reason(
    client: openai.OpenAI, fake_openai: FakeOpenAI, change: dict[str, Any], says: str
) -> None:
    asked = {
        "input_file_id": upload(client, [request_line("a")]),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **change,
    }
    with pytest.raises(openai.BadRequestError, match=says):
        client.batches.create(**asked)
    assert fake_openai.batches == []


def test_a_file_uploaded_for_another_purpose_is_not_a_batch(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    tuning = upload(client, [request_line("a")], purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.batches.create(input_file_id=tuning, endpoint="/v1/chat/completions", completion_window="24h")


def duplicate(lines: list[dict[str, Any] | str]) -> None:
    lines.append(request_line("a"))


def another_model(lines: list[dict[str, Any] | str]) -> None:
    other = request_line("z")
    other["body"]["model"] = "gpt-4o"
    lines.append(other)


@pytest.mark.parametrize(
    ("change", "code", "line"),
    [
        (lambda lines: lines.insert(1, "{'custom_id': 'not json'"), "invalid_json_line", 2),
        (lambda lines: lines.append(request_line("c", url="/v1/completions")), "url_mismatch", 3),
        (duplicate, "duplicate_custom_id", 3),
        (another_model, "model_mismatch", 3),
        (
            lambda lines: lines.append({"custom_id": "d", "method": "POST", "url": "/v1/chat/completions"}),
            "missing_required_parameter",
            3,
        ),
        (lambda lines: lines.clear(), "empty_file", None),
    ],
)
def test_a_file_with_a_bad_line_fails_the_batch_on_the_next_poll(
    client: openai.OpenAI, fake_openai: FakeOpenAI, change: Any, code: str, line: int | None
) -> None:
    lines: list[dict[str, Any] | str] = [request_line("a"), request_line("b")]
    change(lines)
    created = submit(client, lines)
    assert created.status == "validating"

    seen, failed = poll_to_end(client, created.id)

    assert seen == ["failed"] and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data is not None
    assert [(error.code, error.line) for error in failed.errors.data] == [(code, line)]
    assert (failed.output_file_id, failed.error_file_id) == (None, None)
    assert fake_openai.batch_lines_answered == 0


def lines_limit(n: int) -> BatchBehaviour:
    return BatchBehaviour(max_lines=n)


def bytes_limit(n: int) -> BatchBehaviour:
    return BatchBehaviour(max_file_bytes=n)


@pytest.mark.parametrize(("limit", "code"), [(lines_limit, "too_many_tasks"), (bytes_limit, "file_too_large")])
def test_a_file_over_a_limit_fails_the_batch_and_one_at_the_limit_runs(
    client: openai.OpenAI, fake_openai: FakeOpenAI, limit: Callable[[int], BatchBehaviour], code: str
) -> None:
    lines = [request_line(custom_id) for custom_id in "abc"]
    at_limit = 3 if limit is lines_limit else len(client.files.content(upload(client, lines)).content)
    fake_openai.reset(batch=limit(at_limit - 1))
    _, failed = poll_to_end(client, submit(client, lines).id)
    assert failed.errors is not None and [error.code for error in failed.errors.data or []] == [code]

    fake_openai.reset(batch=limit(at_limit))
    assert poll_to_end(client, submit(client, lines).id)[1].status == "completed"


def test_the_default_limits_are_openais() -> None:
    assert (BatchBehaviour().max_lines, BatchBehaviour().max_file_bytes) == (50_000, 200 * 1024 * 1024)


def test_unknown_ids_are_404_with_openais_error(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.files.retrieve("file-nope"),
        lambda: client.files.content("file-nope"),
        lambda: client.batches.retrieve("batch_nope"),
        lambda: client.batches.cancel("batch_nope"),
    ):
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert "nope" in raised.value.message and raised.value.type == "invalid_request_error"


def test_reset_forgets_files_and_batches(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    batch = submit(client, [request_line("a")])
    poll_to_end(client, batch.id)

    fake_openai.reset()

    assert (fake_openai.files, fake_openai.batches, fake_openai.batch_lines_answered) == ({}, [], 0)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch.input_file_id)


def test_a_forgotten_batch_is_404_and_its_files_stay(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    batch = submit(client, [request_line("a")])
    fake_openai.forget(batch.id)  # as after a change of API key or organisation
    for call in (lambda: client.batches.retrieve(batch.id), lambda: client.batches.cancel(batch.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client.files.retrieve(batch.input_file_id).id == batch.input_file_id
