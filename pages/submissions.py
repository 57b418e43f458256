"""A coach's clicks on the generate page: each one taken, repeated or refused, and said so.

Every click on a submit button reruns the page, and a rerun stops the script at its next
Streamlit call. A request is therefore served on a thread of its own (`Submission`), owned
by the session: the page only looks at it, and the run after an interruption goes on
looking at the same request. What the page shows is one value, `CoachPanel`, replaced
whole by its transitions (`clicked`, `collected`, `compared`, `loaded`, `save_retried`,
`rejected`, `sent`, `stopped_waiting`), so that every click ends in exactly one of three ways:

- taken: a new request, served on its own thread;
- the rest of a double click: a click that asks for what the request in flight (or the one
  served a moment ago) asked for is shown that request's outcome, generating nothing;
- refused, in words, while another request is in flight: one request at a time, and the
  coach is told which one runs, for how long, and that this click asked for nothing."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any, Generic, TypeVar

from core.contract.models import ContractError
from core.contract.partial_program import ProgramSoFar
from core.serving.results import GenerationFailed, GenerationResult, SincePrevious
from core.serving.single_flight import SingleFlightTimeout
from core.store.history import Answers
from core.store.rejections import RejectionOutcome

log = logging.getLogger(__name__)
T = TypeVar("T")


# What the work is given to tell the page how it goes: a phase in words, and what of the
# program is complete while it is being written.
Work = Callable[[Callable[[str], None], Callable[[ProgramSoFar], None]], T]


class Submission(Generic[T]):
    def __init__(self, fingerprint: str, work: Work[T], *, phase: str) -> None:
        """Start `work(say, show)` on its own thread; `say(text)` updates `phase`,
        `show(so_far)` updates `progress`."""
        self.fingerprint = fingerprint
        self.phase = phase
        self.progress: ProgramSoFar | None = None
        self.started = monotonic()
        self.outcome: T | None = None
        self.error: BaseException | None = None
        self._finished_at: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._serve, args=(work,), daemon=True, name="submission").start()

    def _serve(self, work: Work[T]) -> None:
        try:
            self.outcome = work(self._say, self._show)
        except BaseException as exc:  # handed to the page, which decides what it means
            self.error = exc
        finally:
            self._finished_at = monotonic()
            self._done.set()

    def _say(self, phase: str) -> None:
        self.phase = phase

    def _show(self, progress: ProgramSoFar) -> None:
        self.progress = progress

    def wait(self, seconds: float) -> bool:
        """True once the request has been served."""
        return self._done.wait(seconds)

    def elapsed_seconds(self) -> float:
        return monotonic() - self.started

    def is_repeated_by(self, fingerprint: str, window_seconds: float) -> bool:
        if fingerprint != self.fingerprint:
            return False
        return self._finished_at is None or monotonic() - self._finished_at < window_seconds


@dataclass(frozen=True)
class Request:
    """What one click on "Generate program" asked for."""

    user_id: str
    responses: dict[str, Any]
    has_paid_access: bool
    force_refresh: bool

    def fingerprints(self) -> tuple[str, ...]:
        """This request as the second click of a double click would ask for it. The box is
        unticked by the first click, so the second one may come unticked: an unforced click
        is also the rest of a forced one."""
        alike = [self] if self.force_refresh else [self, replace(self, force_refresh=True)]
        return tuple(
            json.dumps([r.user_id, r.responses, r.has_paid_access, r.force_refresh], sort_keys=True, default=str)
            for r in alike
        )


@dataclass(frozen=True)
class Form:
    """What the questionnaire held when one of its buttons sent it: the User ID and each
    answer as its field holds it (None or "" for one left empty). Streamlit forgets a field's
    value once a run of another page does not draw it; the form is drawn again from this, so
    that coming back shows the answers beside the program they asked for."""

    user_id: str
    answers: dict[str, Any]
    has_paid_access: bool

    def request(self, *, force_refresh: bool) -> Request:
        given = {field: value for field, value in self.answers.items() if value is not None and value != ""}
        return Request(self.user_id.strip(), given, self.has_paid_access, force_refresh)


@dataclass(frozen=True)
class FieldErrors:
    """The request was refused: each answer's problem, by field."""

    errors: dict[str, str]


@dataclass(frozen=True)
class Failure:
    """No program could be had; nothing was cached or saved."""

    message: str


Outcome = GenerationResult | FieldErrors | Failure


@dataclass(frozen=True)
class Refused:
    """Clicks that asked for nothing because `in_flight` was being generated."""

    request: Request
    in_flight: Request
    in_flight_seconds: float  # how long it had run at the last refused click
    clicks: int = 1


@dataclass(frozen=True)
class Loaded:
    """What "Load latest" found for `user_id`: its latest answers, none, or a problem."""

    user_id: str
    latest: Answers | None = None
    problem: str | None = None


# What a click on "Reject this program" came to: recorded, refused (by field), or failed.
Rejected = RejectionOutcome | FieldErrors | Failure


@dataclass(frozen=True)
class CoachPanel:
    # The last request taken and the submission serving it; `waiting` until its outcome is
    # collected (or the coach stops waiting for it).
    request: Request | None = None
    submission: Submission[GenerationResult] | None = None
    waiting: bool = False
    outcome: Outcome | None = None
    refused: Refused | None = None
    loaded: Loaded | None = None
    # A request the coach stopped waiting for: it may still be generated and saved.
    abandoned: Request | None = None
    save_failed_again: bool = False
    rejection: Rejected | None = None  # of the program shown
    form: Form | None = None  # as last sent, kept whatever the panel shows

    @property
    def owes_refresh(self) -> bool:
        """Whether "Force refresh" should be ticked: a forced request was refused or failed,
        so the refresh the coach asked for is still to be had."""
        refused = self.refused is not None and self.refused.request.force_refresh
        failed = isinstance(self.outcome, (FieldErrors, Failure)) and bool(self.request and self.request.force_refresh)
        return refused or failed

    def clicked(
        self, request: Request, start: Callable[[Request], Submission[GenerationResult]], *, window_seconds: float
    ) -> CoachPanel:
        """A click on "Generate program": taken, the rest of a double click, or refused."""
        current = self.submission
        if current is not None and self.request is not None:
            if any(current.is_repeated_by(f, window_seconds) for f in request.fingerprints()):
                return self
            if self.waiting:
                clicks = self.refused.clicks + 1 if self.refused else 1
                return replace(self, refused=Refused(request, self.request, current.elapsed_seconds(), clicks))
        return CoachPanel(request=request, submission=start(request), waiting=True, form=self.form)

    def collected(self) -> CoachPanel:
        """The outcome of the request waited for, once it has been served."""
        submission = self.submission
        if not self.waiting or submission is None or not submission.wait(0):
            return self
        error = submission.error
        outcome: Outcome
        if isinstance(error, ContractError):
            outcome = FieldErrors({e.field.split(".")[0]: e.message for e in reversed(error.errors)})
        elif isinstance(error, (GenerationFailed, SingleFlightTimeout)):
            outcome = Failure(str(error))
        elif error is not None:
            # A bug: logged whole, and it costs this request only, not the panel's next clicks.
            log.error("The request failed unexpectedly", exc_info=error)
            outcome = Failure(f"an unexpected error ({type(error).__name__}), logged on the server")
        else:
            assert submission.outcome is not None
            outcome = submission.outcome
        return replace(self, waiting=False, outcome=outcome)

    def compared(self, since: SincePrevious) -> CoachPanel:
        """The result with what changed since the user's previous program."""
        if not isinstance(self.outcome, GenerationResult):
            return self
        return replace(self, outcome=replace(self.outcome, since_previous=since))

    def loaded_answers(self, loaded: Loaded) -> CoachPanel:
        """The form holds `loaded`'s answers now: earlier errors under its fields are moot."""
        outcome = None if isinstance(self.outcome, FieldErrors) else self.outcome
        return replace(self, outcome=outcome, loaded=loaded)

    def save_retried(self, result: GenerationResult) -> CoachPanel:
        return replace(self, outcome=result, save_failed_again=result.history_error is not None)

    def rejected(self, rejection: Rejected) -> CoachPanel:
        """The coach rejected the program shown. Once it is recorded, the same answers asked
        again at once are a new request, never the rest of a double click showing the
        rejected program: its entry may be gone, and a new program is what they ask for."""
        if not isinstance(self.outcome, GenerationResult):
            return self
        recorded = isinstance(rejection, RejectionOutcome)
        return replace(self, rejection=rejection, submission=None if recorded else self.submission)

    def stopped_waiting(self) -> CoachPanel:
        """The page no longer waits for the request in flight; its thread runs on, and what
        it generates is cached and saved as usual. The next click is taken."""
        if not self.waiting:
            return self
        return CoachPanel(abandoned=self.request, loaded=self.loaded, form=self.form)

    def sent(self, form: Form) -> CoachPanel:
        """A button of the questionnaire sent `form`: what it is drawn with from now on."""
        return replace(self, form=form)
