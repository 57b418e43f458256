"""What a generator hands the service, whatever the generator: its raw answer with the tokens it
was billed, or a failure with them; the identity that made it; and a coach's rejection the next
generation is told."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from core.prices import NOT_BILLED, OFFLINE_MODEL, Billed


@dataclass(frozen=True)
class Generation:
    """A generator's raw answer: validated by the service, never trusted as is."""

    program: Any
    model: str
    billed: Billed = NOT_BILLED


class GenerationError(RuntimeError):
    """The generator could not produce a program; the message says what failed. The tokens
    the server billed for the failed attempt (a refusal, a truncated or malformed answer)
    travel with it, so that monitoring counts every billed token."""

    def __init__(self, message: str, *, billed: Billed = NOT_BILLED) -> None:
        super().__init__(message)
        self.billed = billed


GeneratorKind = Literal["openai", "offline"]


@dataclass(frozen=True)
class GeneratorIdentity:
    """Which generator makes a program: its model, and a version that changes whenever what
    it would produce changes. A cache entry made under another version is not served
    (unless CACHE_ON_GENERATOR_CHANGE=serve)."""

    model: str
    version: str

    @property
    def kind(self) -> GeneratorKind:
        return self.kind_of(self.model)

    @staticmethod
    def kind_of(model: str) -> GeneratorKind:
        """The kind of the generator that names itself `model`, as every event, entry and
        history row records it: the offline coach is its one model, any other is an LLM's.
        The version's format is free to change; monitoring reads the kind from here."""
        return "offline" if model == OFFLINE_MODEL else "openai"

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
