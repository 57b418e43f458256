"""What every program generator offers the generation service."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from core.models import OnboardingResponses
from core.partial_program import ProgramSoFar

# Told what of the program is complete while it is being written (core.partial_program).
OnProgress = Callable[[ProgramSoFar], None]


@dataclass(frozen=True)
class Generation:
    """A generator's raw answer: validated by the service, never trusted as is."""

    program: Any
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Parts of the two above, as OpenAI counts them: input read from the server's prompt
    # cache (billed at the cached-input price) and output spent on reasoning (billed as output).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class GenerationError(RuntimeError):
    """The generator could not produce a program; the message says what failed. The tokens
    the server billed for the failed attempt (a refusal, a truncated or malformed answer)
    travel with it, so that monitoring counts every billed token."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens


class BilledTokens(TypedDict):
    """What a server reports it billed for one call (None: not reported), in the names of
    the event, entry and history columns that record it."""

    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None


TOKEN_FIELDS: tuple[str, ...] = tuple(BilledTokens.__annotations__)
NOT_BILLED = BilledTokens(prompt_tokens=None, completion_tokens=None, cached_tokens=None, reasoning_tokens=None)


def billed_tokens(billed: Generation | GenerationError | None) -> BilledTokens:
    """The tokens a generation or a failed one was billed (all unknown without one)."""
    if billed is None:
        return NOT_BILLED
    return BilledTokens(
        prompt_tokens=billed.prompt_tokens,
        completion_tokens=billed.completion_tokens,
        cached_tokens=billed.cached_tokens,
        reasoning_tokens=billed.reasoning_tokens,
    )


@dataclass(frozen=True)
class GeneratorIdentity:
    """Which generator makes a program: its kind, its model, and a version that changes
    whenever what it would produce changes. A cache entry made under another version is
    not served (unless CACHE_ON_GENERATOR_CHANGE=serve)."""

    kind: Literal["openai", "offline"]
    model: str
    version: str

    @property
    def source(self) -> Literal["llm", "offline"]:
        """What a generated program's history row says it came from."""
        return "llm" if self.kind == "openai" else "offline"


def fingerprint(*inputs: object) -> str:
    """12 hex characters of SHA-256 over the inputs that shape a generator's output."""
    text = json.dumps(inputs, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Rejected:
    """The program a coach rejected for these very answers, and why (core.rejections): the
    generation after a rejection is told it, so that it answers the reason and differs."""

    reason: str  # as the coach picked it
    note: str | None
    program: Any  # as it was handed out

    def exercise_names(self) -> set[str]:
        weeks = self.program.get("weeks", []) if isinstance(self.program, dict) else []
        return {e["name"] for w in weeks for s in w["sessions"] for e in s["exercises"]}


class ProgramGenerator(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def identity(self) -> GeneratorIdentity: ...

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        """A generator that writes the program over time calls `on_progress` as more of it is
        complete; one that takes milliseconds need not call it at all. With `rejected`, the
        program differs from the one a coach rejected for these answers and answers why."""
        ...

    def varies_after_rejection(self, profile: OnboardingResponses, has_paid_access: bool, program: Any) -> bool:
        """Whether generating again after a coach rejects `program` (handed out for these
        answers) can give another program: where it cannot, the coach is told before
        regenerating, not after (core.repair refuses a program handed back)."""
        ...
