"""Programs from any OpenAI-compatible server through the Chat Completions API, with the
program's JSON schema as structured output. Retries and timeouts are the SDK's own."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import openai
from openai.types.shared_params import ResponseFormatJSONSchema

from core.generators.base import Generation, GenerationError, GeneratorIdentity, fingerprint, program_weeks
from core.models import OnboardingResponses, load_contract

# Bumped by hand with each change of the prompt; the fingerprint catches the rest.
PROMPT_VERSION = "p1"
SYSTEM_PROMPT = """You are an experienced strength and conditioning coach.
Write a personalized training program for the client whose onboarding responses you receive as JSON.
Rules:
- duration_weeks is exactly the number of weeks given; weeks are numbered 1..duration_weeks in order.
- days_per_week equals the client's days_per_week, and every week has exactly that many sessions.
- Use only the client's equipment (bodyweight is always available); keep each session within session_minutes.
- Respect injuries and limitations: avoid movements that load them and say so in safety_notes.
Answer with the program as JSON matching the schema, nothing else."""

# Strict mode supports no string length keywords, and fine-tuned models refuse number
# and array bounds too. The request leaves such keywords out and states them in the
# node's description instead; the service validates every answer against the contract.
STRING_LENGTHS = {"minLength": "at least {} characters", "maxLength": "at most {} characters"}
BOUNDS = {"minimum": "at least {}", "maximum": "at most {}", "minItems": "at least {} items"}
FINE_TUNED_PREFIX = "ft:"
SERVER_MESSAGE_CHARS = 300


def _state_in_words(node: Any, keywords: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _state_in_words(item, keywords)
        return
    if not isinstance(node, dict):
        return
    words = [text.format(node.pop(k)) for k, text in keywords.items() if k in node]
    if words:
        described = node.get("description")
        node["description"] = f"{described} ({', '.join(words)})" if described else ", ".join(words)
    for value in node.values():
        _state_in_words(value, keywords)


def program_response_format(model: str) -> ResponseFormatJSONSchema:
    """The program contract as a strict `json_schema` response format that OpenAI accepts
    for `model` (tests/openai_strict.py checks it against the documented rules)."""
    schema = {k: v for k, v in copy.deepcopy(load_contract("training_program")).items() if not k.startswith("$")}
    schema.pop("examples", None)
    fine_tuned = model.startswith(FINE_TUNED_PREFIX)
    _state_in_words(schema, {**STRING_LENGTHS, **BOUNDS} if fine_tuned else STRING_LENGTHS)
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
        max_completion_tokens: int,
        temperature: float | None = None,
    ) -> None:
        self.model = model
        self.max_completion_tokens = max_completion_tokens
        self.temperature = temperature
        self._api_key = api_key
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=max_retries
        )
        self._response_format = program_response_format(model)
        # The model, the prompt, the response schema and the temperature (when one is sent;
        # else the server's default applies) decide what comes back.
        shaped_by = (model, SYSTEM_PROMPT, self._response_format, temperature)
        self.identity = GeneratorIdentity(
            kind="openai", model=model, version=f"openai-{PROMPT_VERSION}-{fingerprint(*shaped_by)}"
        )

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
                response_format=self._response_format,
                max_completion_tokens=self.max_completion_tokens,
                temperature=openai.omit if self.temperature is None else self.temperature,
            )
        except openai.APIError as exc:
            raise GenerationError(self._describe(exc)) from None
        usage = completion.usage
        prompt_tokens = usage.prompt_tokens if usage else None
        completion_tokens = usage.completion_tokens if usage else None
        try:
            program = self._program_from(completion)
        except GenerationError as exc:
            raise GenerationError(str(exc), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens) from None
        return Generation(
            program=program,
            model=completion.model or self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def missing_model_warning(self) -> str | None:
        """A warning when the server does not serve `model` (a vLLM or Ollama server knows
        only the names it was started with), so the operator hears it before the first
        generation fails; None when it is listed or the list cannot be had."""
        try:
            served = [m.id for m in self._client.with_options(max_retries=0, timeout=5).models.list()]
        except openai.APIError:
            return None
        if not served or self.model in served:
            return None
        shown = ", ".join(sorted(served)[:10])
        return f"the LLM server does not list OPENAI_MODEL={self.model}; it serves: {shown}"

    def _describe(self, exc: openai.APIError) -> str:
        """What failed, in one line: for an HTTP error the server's own message (OpenAI's names
        the offending schema path), never the API key."""
        if isinstance(exc, openai.APITimeoutError):
            return "the LLM did not answer before the timeout"
        if isinstance(exc, openai.APIConnectionError):
            return "could not connect to the LLM server"
        if isinstance(exc, openai.APIStatusError):
            said = _one_line(_redacted(_server_message(exc.body), self._api_key))
            return f"the LLM server answered HTTP {exc.status_code}" + (f": {said}" if said else "")
        return f"the LLM call failed: {type(exc).__name__}"

    def _program_from(self, completion: Any) -> Any:
        if not completion.choices:
            raise GenerationError("the LLM answered with no choices")
        choice = completion.choices[0]
        if getattr(choice.message, "refusal", None):
            raise GenerationError(f"the LLM refused: {_one_line(choice.message.refusal)}")
        if choice.finish_reason == "length":
            raise GenerationError(
                f"the LLM's answer was cut off at max_completion_tokens={self.max_completion_tokens} "
                "(raise LLM_MAX_COMPLETION_TOKENS)"
            )
        if choice.finish_reason == "content_filter":
            raise GenerationError("the LLM server's content filter stopped the answer")
        try:
            return json.loads(choice.message.content or "")
        except json.JSONDecodeError:
            raise GenerationError("the LLM answered with malformed JSON") from None


def _server_message(body: object) -> str:
    # OpenAI's error body is {"error": {"message": ...}}; some compatible servers send
    # {"message": ...} or {"detail": ...}, and the SDK hands over the inner object already.
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        return str(message) if message else ""
    return body if isinstance(body, str) else ""


_ESCAPED = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})")


def _redacted(text: str, secret: str) -> str:
    """`text` without `secret`, also where it was written escaped (`sk\\u002d…`, `sk%2D…`): a
    server may echo the key it was sent. Redacted whole before the text is shortened, so no
    prefix of the key survives a cut either."""
    if not secret:
        return text
    decoded = _ESCAPED.sub(lambda m: chr(int(next(g for g in m.groups() if g), 16)), text)
    return decoded.replace(secret, "[key]")


def _one_line(text: str) -> str:
    collapsed = re.sub(r"\s+", " ", text).strip()
    return collapsed if len(collapsed) <= SERVER_MESSAGE_CHARS else collapsed[: SERVER_MESSAGE_CHARS - 1] + "…"
