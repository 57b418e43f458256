"""Programs from any OpenAI-compatible server through the Chat Completions API, with the
program's JSON schema as structured output. Retries and timeouts are the SDK's own."""

from __future__ import annotations

import json
from typing import Any

import openai

from core.generators.base import Generation, GenerationError, program_weeks
from core.models import OnboardingResponses, load_contract

SYSTEM_PROMPT = """You are an experienced strength and conditioning coach.
Write a personalized training program for the client whose onboarding responses you receive as JSON.
Rules:
- duration_weeks is exactly the number of weeks given; weeks are numbered 1..duration_weeks in order.
- days_per_week equals the client's days_per_week, and every week has exactly that many sessions.
- Use only the client's equipment (bodyweight is always available); keep each session within session_minutes.
- Respect injuries and limitations: avoid movements that load them and say so in safety_notes.
Answer with the program as JSON matching the schema, nothing else."""


def program_response_format() -> dict[str, Any]:
    schema = {k: v for k, v in load_contract("training_program").items() if not k.startswith("$")}
    schema.pop("examples", None)
    return {"type": "json_schema", "json_schema": {"name": "training_program", "strict": True, "schema": schema}}


class OpenAIChatGenerator:
    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None,
        timeout_seconds: float,
        max_retries: int,
    ) -> None:
        self.model = model
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=max_retries
        )
        self._response_format = program_response_format()

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def generate(self, profile: OnboardingResponses, has_paid_access: bool) -> Generation:
        request = {
            "onboarding_responses": profile.normalized(),
            "has_paid_access": has_paid_access,
            "duration_weeks": program_weeks(has_paid_access),
        }
        try:
            completion = self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": json.dumps(request)},
                ],
                response_format=self._response_format,  # type: ignore[arg-type]
            )
        except openai.APITimeoutError:
            raise GenerationError("the LLM did not answer before the timeout") from None
        except openai.APIStatusError as exc:
            raise GenerationError(f"the LLM server answered HTTP {exc.status_code}") from None
        except openai.APIConnectionError:
            raise GenerationError("could not connect to the LLM server") from None
        except openai.OpenAIError as exc:
            raise GenerationError(f"the LLM call failed: {type(exc).__name__}") from None
        return Generation(
            program=_program_from(completion),
            model=completion.model or self.model,
            prompt_tokens=completion.usage.prompt_tokens if completion.usage else None,
            completion_tokens=completion.usage.completion_tokens if completion.usage else None,
        )


def _program_from(completion: Any) -> Any:
    if not completion.choices:
        raise GenerationError("the LLM answered with no choices")
    message = completion.choices[0].message
    if getattr(message, "refusal", None):
        raise GenerationError(f"the LLM refused: {message.refusal[:200]}")
    if completion.choices[0].finish_reason == "length":
        raise GenerationError("the LLM's answer was cut off at the token limit")
    try:
        return json.loads(message.content or "")
    except json.JSONDecodeError:
        raise GenerationError("the LLM answered with malformed JSON") from None
