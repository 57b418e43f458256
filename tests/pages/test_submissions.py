import logging
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from core.contract.models import ContractError, FieldError
from core.contract.partial_program import ProgramSoFar
from core.serving.results import GenerationFailed, GenerationResult, SincePrevious
from core.store.rejections import RejectionOutcome
from core.store.schema import utcnow
from pages.submissions import CoachPanel, Failure, FieldErrors, Form, Loaded, Request, Submission


def test_a_second_click_while_or_just_after_a_request_is_served_is_a_repeat_and_later_ones_are_new() -> None:
    release = threading.Event()
    submission = Submission("a", lambda say, show: release.wait(5) and "program", phase="checking")
    assert submission.is_repeated_by("a", window_seconds=0)  # still being served
    assert not submission.is_repeated_by("b", window_seconds=60)  # other answers: a new request
    release.set()
    assert submission.wait(5) and submission.outcome == "program"
    assert submission.is_repeated_by("a", window_seconds=60)
    assert not submission.is_repeated_by("a", window_seconds=0)  # asked again later: a new request


def test_progress_and_failures_reach_the_page() -> None:
    written = ProgramSoFar(title="Strength base")

    def work(say: object, show: object) -> None:
        say("generating")  # type: ignore[operator]
        show(written)  # type: ignore[operator]
        raise ValueError("no program")

    submission = Submission("a", work, phase="checking")
    assert submission.wait(5)
    assert submission.phase == "generating" and isinstance(submission.error, ValueError)
    assert submission.progress == written
    with pytest.raises(ValueError):
        raise submission.error


def result(user_id: str = "client-1") -> GenerationResult:
    return GenerationResult("{}", False, f"program:u{user_id}:paidfalse:dx", 1.0, utcnow(), {"goal": "strength"})


def ask(user_id: str = "client-1", *, force: bool = False) -> Request:
    return Request(user_id, {"goal": "strength"}, has_paid_access=False, force_refresh=force)


def outcome(request: Request) -> GenerationResult:
    """What the service does with `request`: "bad…" ids are refused, "failing…" ones fail."""
    if request.user_id.startswith("bad"):
        raise ContractError("invalid input", [FieldError("user_id", "must be 1-128 characters")])
    if request.user_id.startswith("failing"):
        raise GenerationFailed("generation failed: the LLM answered 500")
    return result(request.user_id)


class Server:
    """Starts each request's submission, served when the test says."""

    def __init__(self) -> None:
        self.started: list[Request] = []
        self.releases: list[threading.Event] = []

    def __call__(self, request: Request) -> Submission[GenerationResult]:
        self.started.append(request)
        release = threading.Event()
        self.releases.append(release)
        return Submission(
            request.fingerprints()[0],
            lambda say, show: release.wait(5) and outcome(request),
            phase="Checking the cache",
        )

    def serve(self) -> None:
        self.releases[-1].set()


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    yield server
    for release in server.releases:
        release.set()


def served(panel: CoachPanel, server: Server) -> CoachPanel:
    server.serve()
    assert panel.submission is not None and panel.submission.wait(5)
    return panel.collected()


def test_a_click_while_a_request_is_in_flight_is_refused_in_words_and_the_next_one_after_it_is_taken(
    server: Server,
) -> None:
    panel = CoachPanel().clicked(ask("client-1"), server, window_seconds=1)
    assert panel.waiting and panel.collected() is panel  # nothing to collect yet
    for _ in range(3):
        panel = panel.clicked(ask("client-2"), server, window_seconds=1)
    assert [r.user_id for r in server.started] == ["client-1"]
    assert panel.refused is not None and panel.refused.clicks == 3
    assert (panel.refused.request.user_id, panel.refused.in_flight.user_id) == ("client-2", "client-1")

    panel = served(panel, server)
    assert isinstance(panel.outcome, GenerationResult) and panel.outcome.cache_key.startswith("program:uclient-1:")
    assert panel.refused is not None  # still said, beside client-1's program
    panel = panel.clicked(ask("client-2"), server, window_seconds=0)
    assert [r.user_id for r in server.started] == ["client-1", "client-2"]
    assert panel.waiting and panel.refused is None and panel.outcome is None


@pytest.mark.parametrize("second", [ask(force=True), ask(force=False)], ids=["ticked", "unticked"])
def test_the_second_click_of_a_double_click_is_the_first_ones_while_or_just_after_it_is_served(
    server: Server, second: Request
) -> None:
    panel = CoachPanel().clicked(ask(force=True), server, window_seconds=30)
    assert panel.clicked(second, server, window_seconds=30) is panel
    panel = served(panel, server)
    assert panel.clicked(second, server, window_seconds=30) is panel
    assert len(server.started) == 1
    assert panel.clicked(ask(force=False), server, window_seconds=0) is not panel  # later: a new request


def test_force_refresh_is_owed_while_its_request_is_refused_or_failed_and_never_once_served(server: Server) -> None:
    forced = CoachPanel().clicked(ask("client-1", force=True), server, window_seconds=0)
    assert not forced.owes_refresh
    assert not served(forced, server).owes_refresh
    refused = CoachPanel().clicked(ask("client-1"), server, window_seconds=0)
    assert refused.clicked(ask("client-2", force=True), server, window_seconds=0).owes_refresh
    assert not refused.clicked(ask("client-2"), server, window_seconds=0).owes_refresh
    for user_id in ("bad:id", "failing-client"):
        failed = served(CoachPanel().clicked(ask(user_id, force=True), server, window_seconds=0), server)
        assert isinstance(failed.outcome, (FieldErrors, Failure)) and failed.owes_refresh
        assert not failed.clicked(ask("client-1", force=True), server, window_seconds=0).owes_refresh


def test_what_a_request_raised_is_an_outcome_by_kind(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    refused = served(CoachPanel().clicked(ask("bad:id"), server, window_seconds=0), server)
    assert refused.outcome == FieldErrors({"user_id": "must be 1-128 characters"})
    failed = served(CoachPanel().clicked(ask("failing-client"), server, window_seconds=0), server)
    assert failed.outcome == Failure("generation failed: the LLM answered 500")
    # A bug is logged whole and ends its request only: the panel takes the next click.
    crash = Submission("a", lambda say, show: 1 / 0, phase="checking")
    assert crash.wait(5)
    with caplog.at_level(logging.ERROR):
        crashed = CoachPanel(request=ask(), submission=crash, waiting=True).collected()  # type: ignore[arg-type]
    assert crashed.outcome == Failure("an unexpected error (ZeroDivisionError), logged on the server")
    assert caplog.records[-1].exc_info is not None and caplog.records[-1].exc_info[0] is ZeroDivisionError
    assert crashed.clicked(ask(), server, window_seconds=0).waiting


def test_loading_answers_drops_field_errors_only_and_each_other_transition_keeps_the_rest(server: Server) -> None:
    loaded = Loaded("client-1")
    refused = served(CoachPanel().clicked(ask("bad:id"), server, window_seconds=0), server)
    assert refused.loaded_answers(loaded).outcome is None
    panel = served(CoachPanel().clicked(ask(), server, window_seconds=0), server).loaded_answers(loaded)
    assert isinstance(panel.outcome, GenerationResult) and panel.loaded == loaded

    since = SincePrevious(None)
    compared = panel.compared(since)
    assert isinstance(compared.outcome, GenerationResult) and compared.outcome.since_previous == since
    assert refused.compared(since) is refused

    saved = compared.save_retried(result())
    assert not saved.save_failed_again and saved.loaded == loaded
    unsaved = compared.save_retried(replace(result(), history_error="The program could not be saved"))
    assert unsaved.save_failed_again


def test_stopping_waiting_forgets_the_request_in_flight_so_the_next_click_is_taken(server: Server) -> None:
    panel = CoachPanel().clicked(ask("client-1"), server, window_seconds=30)
    panel = panel.clicked(ask("client-2"), server, window_seconds=30)
    stopped = panel.stopped_waiting()
    assert not stopped.waiting and stopped.abandoned == ask("client-1") and stopped.refused is None
    assert stopped.stopped_waiting() is stopped
    taken = stopped.clicked(ask("client-1"), server, window_seconds=30)
    assert taken.waiting and taken.abandoned is None
    assert [r.user_id for r in server.started] == ["client-1", "client-1"]


def test_once_a_rejection_is_recorded_the_same_answers_asked_at_once_are_a_new_request(server: Server) -> None:
    panel = served(CoachPanel().clicked(ask(), server, window_seconds=30), server)
    assert panel.clicked(ask(), server, window_seconds=30) is panel  # the rest of a double click
    refused = panel.rejected(FieldErrors({"category": "is required"}))
    assert refused.rejection == FieldErrors({"category": "is required"})
    assert refused.clicked(ask(), server, window_seconds=30) is refused  # nothing was rejected
    outcome = RejectionOutcome(1, "wrong_level", "dashboard", utcnow(), "program:uclient-1:paidfalse:dx", "invalidated")
    rejected = panel.rejected(outcome)
    assert rejected.rejection == outcome and rejected.outcome == panel.outcome
    taken = rejected.clicked(ask(), server, window_seconds=30)
    assert taken.waiting and taken.rejection is None and len(server.started) == 2
    assert CoachPanel().rejected(outcome) == CoachPanel()  # no program shown, none to reject


def test_the_form_as_last_sent_is_kept_through_every_transition(server: Server) -> None:
    form = Form(" client-1 ", {"goal": "strength", "age": None, "injuries": ""}, has_paid_access=True)
    assert form.request(force_refresh=False) == Request("client-1", {"goal": "strength"}, True, False)
    panel = CoachPanel().sent(form).clicked(ask(), server, window_seconds=30)
    assert panel.form == form
    assert panel.stopped_waiting().form == form  # the form stays, whatever the panel forgets
    assert served(panel, server).form == form
