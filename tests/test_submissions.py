import threading

import pytest

from core.submissions import Submission


def test_a_second_click_while_or_just_after_a_request_is_served_is_a_repeat_and_later_ones_are_new() -> None:
    release = threading.Event()
    submission = Submission("a", lambda say: release.wait(5) and "program", phase="checking")
    assert submission.is_repeated_by("a", window_seconds=0)  # still being served
    assert not submission.is_repeated_by("b", window_seconds=60)  # other answers: a new request
    release.set()
    assert submission.wait(5) and submission.outcome == "program"
    assert submission.is_repeated_by("a", window_seconds=60)
    assert not submission.is_repeated_by("a", window_seconds=0)  # asked again later: a new request


def test_progress_and_failures_reach_the_page() -> None:
    def work(say: object) -> None:
        say("generating")  # type: ignore[operator]
        raise ValueError("no program")

    submission = Submission("a", work, phase="checking")
    assert submission.wait(5)
    assert submission.phase == "generating" and isinstance(submission.error, ValueError)
    with pytest.raises(ValueError):
        raise submission.error
