"""A generation judged as the service judges it (the contract, then the fit rules), and a
program that fails sent back to a generator that can mend it, with what failed, up to
LLM_REPAIR_ATTEMPTS times. Every attempt was billed: the result carries all their tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

from core.contract.fit import Rule, UnfitProgram, validate_program
from core.contract.generation import Generation, GenerationError, Rejected
from core.contract.models import ContractError, FieldError, OnboardingResponses, TrainingProgram
from core.generators.base import OnProgress, ProgramGenerator


@runtime_checkable
class Repairer(Protocol):
    """A generator that can be told what is wrong with its answer and asked again (an LLM,
    in the same conversation). The offline coach is not one: its programs always fit."""

    def repair(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        answer: Any,
        problems: str,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation: ...


# Why an attempt did not pass: a fit rule it broke, or the contract itself (its shape).
Cause = Rule | Literal["contract"]


@dataclass(frozen=True)
class Judged:
    """The last attempt's generation, with the tokens of every attempt; its program when it
    passed, else why not (`refused`); how many attempts it took; and what any attempt broke
    (a repaired program's first attempt's included)."""

    generation: Generation
    attempts: int
    rules_broken: tuple[Cause, ...]
    program: TrainingProgram | None = None
    refused: ContractError | None = None

    def recorded(self) -> dict[str, Any]:
        """How it was judged, as an event and a rollout's program record it: its attempts,
        and the fit rules any broke."""
        return {"attempts": self.attempts, "rules_broken": ",".join(self.rules_broken) or None}


def generate_judged(
    generator: ProgramGenerator,
    profile: OnboardingResponses,
    has_paid_access: bool,
    *,
    repairs: int,
    on_progress: OnProgress | None = None,
    rejected: Rejected | None = None,
) -> Judged:
    """GenerationError when an attempt fails outright, carrying every attempt's tokens.
    With `rejected` (the program a coach rejected for these answers), a program that is that
    very program again does not pass: the coach would be handed back what they refused."""
    generation = generator.generate(profile, has_paid_access, on_progress, rejected)
    attempts, broken = 1, set[Cause]()
    while True:
        try:
            program = validate_program(generation.program, profile, has_paid_access)
            if rejected is not None and _same(program, rejected.program):
                return Judged(generation, attempts, tuple(sorted(broken)), refused=HandedBack())
        except ContractError as exc:
            broken |= set(exc.rules) if isinstance(exc, UnfitProgram) else {"contract"}
            if attempts > repairs or not isinstance(generator, Repairer):
                return Judged(generation, attempts, tuple(sorted(broken)), refused=exc)
            earlier = generation
            try:
                again = generator.repair(profile, has_paid_access, generation.program, str(exc), on_progress, rejected)
            except GenerationError as failed:
                raise _with_tokens(failed, earlier) from None
            generation, attempts = _added(again, earlier), attempts + 1
            continue
        return Judged(generation, attempts, tuple(sorted(broken)), program=program)


class HandedBack(ContractError):
    """A program that is the very one the coach rejected for these answers."""

    def __init__(self) -> None:
        super().__init__(
            "program after a rejection",
            [FieldError("(program)", "is the very program the coach rejected; this generator gave nothing else")],
        )


def _same(program: Any, rejected: Any) -> bool:
    return json.dumps(program, sort_keys=True) == json.dumps(rejected, sort_keys=True)


def _added(later: Generation, earlier: Generation) -> Generation:
    return replace(later, billed=later.billed + earlier.billed)


def _with_tokens(failed: GenerationError, earlier: Generation) -> GenerationError:
    return GenerationError(f"{failed} (repairing an answer that did not pass)", billed=failed.billed + earlier.billed)
