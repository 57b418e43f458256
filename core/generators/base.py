"""What every program generator offers the generation service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from core.contract.generation import Generation, GeneratorIdentity, Rejected
from core.contract.models import OnboardingResponses
from core.contract.partial_program import ProgramSoFar

# Told what of the program is complete while it is being written (core/contract/partial_program.py).
OnProgress = Callable[[ProgramSoFar], None]


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
