"""What every program generator offers the generation service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from core.models import OnboardingResponses

# Paid access buys a longer, progressive block; that is why the flag is part of the cache key.
FREE_WEEKS = 4
PAID_WEEKS = 8


def program_weeks(has_paid_access: bool) -> int:
    return PAID_WEEKS if has_paid_access else FREE_WEEKS


@dataclass(frozen=True)
class Generation:
    """A generator's raw answer: validated by the service, never trusted as is."""

    program: Any
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class GenerationError(RuntimeError):
    """The generator could not produce a program; the message says what failed. The tokens
    the server billed for the failed attempt (a refusal, a truncated or malformed answer)
    travel with it, so that monitoring counts every billed token."""

    def __init__(self, message: str, *, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class ProgramGenerator(Protocol):
    @property
    def name(self) -> str: ...

    def generate(self, profile: OnboardingResponses, has_paid_access: bool) -> Generation: ...
