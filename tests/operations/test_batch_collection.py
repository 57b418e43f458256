"""Collecting a rollout's batches (issue 30): lines a hostile or careless server writes fail
only themselves, a line repeated is billed once per line and counted once per key, a batch
the server forgot is given up, and an operator can cancel one."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion
from sqlalchemy import Engine

from core.operations.rollout import batches, reports
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import start as rollout_start
from core.prices import Billed
from core.settings import Settings
from tests.conftest import CliRun
from tests.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, BatchBehaviour, Behaviour, FakeOpenAI
from tests.operations.test_rollout import CANDIDATE, app_service, check, current, serve, staged_rows

__all__ = ["current"]  # a fixture these tests share with tests/operations/test_rollout.py


def by_user(engine: Engine) -> dict[str, Any]:
    return {row.user_id: row for row in staged_rows(engine)}


def test_lines_no_column_can_hold_fail_alone_and_the_rest_is_staged(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    serve(app_service(engine, current), "u4")
    hostile = {
        ":uu1:": Behaviour(answered_model="m" * 201),
        ":uu2:": Behaviour(prompt_tokens=2**63),
        ":uu3:": Behaviour(completion_tokens=-5000),
    }
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0, line_behaviours=hostile))
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [collected] = check(engine, current)
    assert (collected.collected, collected.recorded) == (True, {"failed": 3, "staged": 1})
    rows = by_user(engine)
    assert rows["u1"].error.startswith("model is 201 characters, more than 200")
    assert rows["u2"].error.startswith(f"usage.prompt_tokens is {2**63}, not a count from 0 to {2**31 - 1}")
    assert rows["u3"].error.startswith("usage.completion_tokens is -5000")
    assert rows["u4"].state == "staged" and rows["u4"].prompt_tokens == PROMPT_TOKENS
    assert all(rows[u].prompt_tokens is None and rows[u].completion_tokens is None for u in ("u1", "u2", "u3"))
    [summary] = reports.summaries(engine, current)
    price = current.price_of(CANDIDATE)
    assert price is not None
    assert summary.cost == pytest.approx(price.cost(Billed(PROMPT_TOKENS, COMPLETION_TOKENS), "batch"))


@pytest.mark.parametrize(
    ("usage", "model", "says"),
    [
        ({"prompt_tokens": 2**31, "completion_tokens": 1}, "m", "usage.prompt_tokens is 2147483648"),
        ({"prompt_tokens": 1, "completion_tokens": -1}, "m", "usage.completion_tokens is -1"),
        (
            {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -2}},
            "m",
            "usage.prompt_tokens_details.cached_tokens is -2",
        ),
        (
            {"prompt_tokens": 1, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2**40}},
            "m",
            f"usage.completion_tokens_details.reasoning_tokens is {2**40}",
        ),
        ({"prompt_tokens": 1, "completion_tokens": 1}, "m" * 201, "model is 201 characters"),
        ({"prompt_tokens": 1, "completion_tokens": 1}, "gpt\x00-4", "model holds a control character"),
        ({"prompt_tokens": 2**31 - 1, "completion_tokens": 0}, "m" * 200, None),
    ],
)
def test_each_bound_on_a_result_line_says_which_field_broke_it(
    usage: dict[str, Any], model: str, says: str | None
) -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [],
            "usage": {**usage, "total_tokens": 0},
        }
    )
    broken = batches.out_of_bounds(completion)
    assert broken == says if says is None else broken is not None and broken.startswith(says)


# The stand-in shuffles a batch's output with its seed; with this one u1's refusal comes first.
SEED_REFUSAL_FIRST = 0


def test_a_line_answered_twice_or_also_errored_bills_every_line_and_counts_its_key_once(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    again = Behaviour(prompt_tokens=7, completion_tokens=11)
    fake_openai.reset(
        batch=BatchBehaviour(
            polls_in_progress=0,
            # u1's first answer is a refusal (billed, invalid), the second a valid program.
            line_behaviours={":uu1:": Behaviour(mode="refusal")},
            answered_twice={":uu1:": again, ":uu2:": again},
            also_errored=frozenset({":uu3:"}),
            seed=SEED_REFUSAL_FIRST,
        )
    )
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [collected] = check(engine, current)
    assert collected.recorded == {"staged": 3}
    [batch] = fake_openai.batches
    assert batch.output_file_id is not None
    output = fake_openai.files[batch.output_file_id].content.decode()
    assert output.index("I can't help") < output.index('"prompt_tokens": 7'), "the refusal is read first"
    rows = by_user(engine)
    for user in ("u1", "u2"):
        assert rows[user].state == "staged" and rows[user].program is not None
        billed = (rows[user].prompt_tokens, rows[user].completion_tokens)
        assert billed == (PROMPT_TOKENS + 7, COMPLETION_TOKENS + 11)
    assert (rows["u3"].state, rows["u3"].prompt_tokens) == ("staged", PROMPT_TOKENS)
    [summary] = reports.summaries(engine, current)
    assert summary.states == {"staged": 3}


def plannable(engine: Engine, settings: Settings) -> int:
    return rollout_plan.plan(engine, settings, rollout_plan.candidate(settings, CANDIDATE)).count


def test_a_batch_the_server_forgot_is_given_up_on_the_third_404_in_a_row(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, cli: Callable[..., CliRun]
) -> None:
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [batch_id] = started.batch_ids
    fake_openai.forget(batch_id)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    url = str(current.database_url)
    for n in (1, 2):
        done = cli(url, "rollout", "status", **env)
        assert done.code == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"check {n} of 3 before it is given up" in done.stderr
        assert plannable(engine, current) == 0
    given_up = cli(url, "rollout", "status", **env)
    assert given_up.code == 0 and given_up.stderr.count("\n") == 1, given_up.stderr
    assert f"batch {batch_id} given up, its keys can be planned again" in given_up.stderr
    [report] = given_up.json()["batches"]
    assert (report["status"], report["collected"], report["recorded"]) == ("not_found", True, {"failed": 3})
    assert {row.error for row in staged_rows(engine)} == {
        "not run: the server no longer knows the batch (404 on 3 checks in a row)"
    }
    assert plannable(engine, current) == 3
    assert cli(url, "rollout", "status", **env).json()["batches"] == []


def test_rollout_cancel_frees_the_keys_at_once_and_what_ran_is_still_collected(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, cli: Callable[..., CliRun]
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=5, completed_before_end=1))
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    check(engine, current)  # in progress
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    url = str(current.database_url)
    done = cli(url, "rollout", "cancel", "--rollout-id", str(started.rollout_id), **env)
    [report] = done.json()["batches"]
    assert report["status"] == "cancelling"
    assert plannable(engine, current) == 3
    [collected] = check(engine, current)
    assert (collected.status, collected.recorded) == ("cancelled", {"staged": 1, "failed": 2})
    nothing_out = cli(url, "rollout", "cancel", "--rollout-id", str(started.rollout_id), **env)
    assert nothing_out.code == 2 and nothing_out.stderr.count("\n") == 1
    assert "has no batch still out" in nothing_out.stderr


def test_cancelling_a_batch_the_server_forgot_gives_it_up_at_once(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    assert started.rollout_id is not None
    fake_openai.forget(started.batch_ids[0])
    [cancelled] = batches.cancel(engine, current, started.rollout_id)
    assert cancelled.given_up and cancelled.recorded == {"failed": 3}
    assert plannable(engine, current) == 3


def test_a_big_output_file_is_read_as_it_streams_in_never_held_whole(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    # About 20 MB of lines beside the three results: a full batch of large programs is gigabytes.
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0, padding_lines=20_000, padding_line_bytes=1000))
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [batch_id] = started.batch_ids
    client = openai.OpenAI(api_key="sk-test", base_url=fake_openai.base_url)
    output_file_id = client.batches.retrieve(batch_id).output_file_id  # the stand-in writes its files now
    assert output_file_id is not None
    size = len(fake_openai.files[output_file_id].content)
    tracemalloc.start()
    try:
        [collected] = check(engine, current)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert collected.recorded == {"staged": 3}
    assert size > 20_000_000 and peak < size / 4, f"{peak:,} bytes at most while collecting a {size:,}-byte file"


def test_a_batch_status_beyond_openais_is_recorded_cut_to_its_column(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(batch=BatchBehaviour(said_status="s" * 300))
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [polled] = check(engine, current)
    assert (polled.status, polled.collected, polled.problem) == ("s" * 300, False, None)
    [summary] = reports.summaries(engine, current)
    assert summary.batches == {"s" * batches.STATUS_MAX_CHARS: 1}


def test_cancelling_a_batch_that_already_ended_leaves_it_to_be_collected(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, cli: Callable[..., CliRun]
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    openai.OpenAI(api_key="sk-test", base_url=fake_openai.base_url).batches.retrieve(started.batch_ids[0])
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    done = cli(str(current.database_url), "rollout", "cancel", "--rollout-id", str(started.rollout_id), **env)
    assert done.code == 1 and done.stderr.count("\n") == 1
    assert "not cancelled: it has already ended; `rollout status` collects it" in done.stderr
    assert plannable(engine, current) == 0
    [collected] = check(engine, current)
    assert collected.recorded == {"staged": 3}
