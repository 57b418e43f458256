"""The offline coach, counting its calls, optionally taking a fixed time per call: a
deterministic stand-in for the LLM whose cost is known."""

from __future__ import annotations

import threading
import time
from typing import Any

from core.contract.generation import Generation, Rejected
from core.contract.models import OnboardingResponses
from core.generators import OfflineGenerator, OnProgress


class CountingGenerator:
    name = "counting-offline"

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.calls = 0
        self._lock = threading.Lock()
        self._offline = OfflineGenerator()
        self.identity = self._offline.identity  # it writes the offline coach's programs

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        with self._lock:
            self.calls += 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return self._offline.generate(profile, has_paid_access, rejected=rejected)

    def varies_after_rejection(self, profile: OnboardingResponses, has_paid_access: bool, program: Any) -> bool:
        return self._offline.varies_after_rejection(profile, has_paid_access, program)
