"""A coach's click, served so that no later click can cut it short or repeat it.

Every click on a submit button reruns the page, and a rerun stops the script at its next
Streamlit call. A request is therefore served on a thread of its own, owned by the
session: the page only waits for it and shows its progress, and the run after an
interruption goes on waiting for the same request. A second click that asks for exactly
the same thing while the request is served, or within a moment after, is the second
click of a double click: it is shown the first one's outcome instead of generating (and
saving) a second program. The same answers asked for again later are a new request."""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import monotonic
from typing import Generic, TypeVar

T = TypeVar("T")


class Submission(Generic[T]):
    def __init__(self, fingerprint: str, work: Callable[[Callable[[str], None]], T], *, phase: str) -> None:
        """Start `work(say)` on its own thread; `say(text)` updates `phase`."""
        self.fingerprint = fingerprint
        self.phase = phase
        self.started = monotonic()
        self.outcome: T | None = None
        self.error: BaseException | None = None
        self._finished_at: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._serve, args=(work,), daemon=True, name="submission").start()

    def _serve(self, work: Callable[[Callable[[str], None]], T]) -> None:
        try:
            self.outcome = work(self._say)
        except BaseException as exc:  # handed to the page, which decides what it means
            self.error = exc
        finally:
            self._finished_at = monotonic()
            self._done.set()

    def _say(self, phase: str) -> None:
        self.phase = phase

    def wait(self, seconds: float) -> bool:
        """True once the request has been served."""
        return self._done.wait(seconds)

    def elapsed_seconds(self) -> float:
        return monotonic() - self.started

    def is_repeated_by(self, fingerprint: str, window_seconds: float) -> bool:
        if fingerprint != self.fingerprint:
            return False
        return self._finished_at is None or monotonic() - self._finished_at < window_seconds
