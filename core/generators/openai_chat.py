"""Programs from any OpenAI-compatible server through the Chat Completions API, with the
program's JSON schema as structured output. Retries and timeouts are the SDK's own."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Iterable
from functools import cache
from types import TracebackType
from typing import Any, Literal

import httpx2
import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared_params import ResponseFormatJSONSchema

from core.contract.catalogue import revision
from core.contract.fit import program_weeks
from core.contract.generation import Generation, GenerationError, GeneratorIdentity, Rejected, fingerprint
from core.contract.models import OnboardingResponses, load_contract, parse_onboarding
from core.contract.partial_program import ProgressReporter
from core.generators.base import OnProgress
from core.generators.openai_schema import SchemaFlavour, numbered, program_response_format
from core.prices import NOT_BILLED, Billed

# Bumped by hand with each change of the prompt; the fingerprint catches the rest.
PROMPT_VERSION = "p4"


SYSTEM_PROMPT = """You are an experienced strength and conditioning coach.
Write a personalized training program for the client whose onboarding responses you receive as JSON.
Rules:
- goal and experience_level are the client's; duration_weeks is exactly the number of weeks given.
- Weeks come in order, the first week first; every week has exactly days_per_week sessions.
- Use only exercise names the schema lists: the catalogue entries the client's equipment and level allow.
- Keep each session within session_minutes, counting every set (about 3 s a repetition) and the rest after it.
- reps is a count ("10"), a range ("8-12"), a time ("30 s", "10 min") or "AMRAP".
- If the client reports an injury or limitation, say in injury_notes how the program spares it, and avoid
  movements that load it.
- If the coach rejected the last program (coach_rejected_the_last_program), write a different one that answers
  the coach's reason and note, with other exercises where the client's equipment allows.
- Be brief: short notes.
Answer with the program as JSON matching the schema, nothing else."""


# What a repair asks, after the answer that did not pass (core.repair).
REPAIR_PROMPT = """That program cannot be given to the client: {problems}.
Write the whole program again, as JSON matching the schema, with each of these fixed and the rest kept."""


# How the server takes the cap on the answer's length: OpenAI's reasoning models refuse
# `max_tokens`; Ollama drops `max_completion_tokens` without a word (ollama#7125).
CapParameter = Literal["max_completion_tokens", "max_tokens"]


SERVER_MESSAGE_CHARS = 300


TIMED_OUT = "the LLM did not answer before the timeout"


@cache
def tls_context() -> ssl.SSLContext:
    """The certificate authorities every OpenAI client here trusts, loaded once: each client
    would load the bundle again (20-40 ms of CPU), and a service builds one per generator."""
    return httpx2.create_ssl_context()


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
        schema: SchemaFlavour = "strict",
        cap_parameter: CapParameter = "max_completion_tokens",
    ) -> None:
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.max_completion_tokens = max_completion_tokens
        self.temperature = temperature
        self.schema = schema
        self.cap_parameter = cap_parameter
        # Whether the server is OpenAI's own: another one's 500 may mean it cannot do structured output.
        self._elsewhere = base_url is not None
        self._api_key = api_key
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_seconds,
            max_retries=max_retries,
            http_client=openai.DefaultHttpxClient(verify=tls_context()),
        )
        # The model, the prompt, the response schema and the temperature (when one is sent;
        # else the server's default applies) decide what comes back. The schema is the
        # contract's, shaped by the client's answers and the exercise catalogue: the one for
        # each of the contract's example clients, with every days a week and access, and the
        # catalogue's revision stand for all.
        samples = [
            parse_onboarding({**example, "days_per_week": days})
            for example in load_contract("onboarding_responses")["examples"]
            for days in range(1, 8)
        ]
        schemas = [self._response_format(profile, paid) for profile in samples for paid in (False, True)]
        shaped_by = (model, SYSTEM_PROMPT, REPAIR_PROMPT, schemas, revision(), temperature)
        self.identity = GeneratorIdentity(model=model, version=f"openai-{PROMPT_VERSION}-{fingerprint(*shaped_by)}")

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def _response_format(self, profile: OnboardingResponses, has_paid_access: bool) -> ResponseFormatJSONSchema:
        return program_response_format(self.model, profile, has_paid_access, flavour=self.schema)

    def request(
        self, profile: OnboardingResponses, has_paid_access: bool, rejected: Rejected | None = None
    ) -> dict[str, Any]:
        """The chat-completions request for one profile, unstreamed: what `generate` sends
        (streamed) and what a Batch API line carries as its body. The system prompt and the
        schema come first, so the server can cache that prefix (a server that enforces the
        schema as a grammar, as llama.cpp does, caches the prompt alone); the client's
        answers come last."""
        answers: dict[str, Any] = {
            "onboarding_responses": profile.normalized(),
            "has_paid_access": has_paid_access,
            "duration_weeks": program_weeks(has_paid_access),
        }
        if rejected is not None:
            answers["coach_rejected_the_last_program"] = {
                "reason": rejected.reason,
                "note": rejected.note,
                "its_exercises": sorted(rejected.exercise_names()),
            }
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": json.dumps(answers)},
            ],
            "response_format": self._response_format(profile, has_paid_access),
            self.cap_parameter: self.max_completion_tokens,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        """The program, streamed: `on_progress` hears what of it is complete as it arrives.
        The usage comes in the stream's last chunk, so a failed answer's tokens are counted
        too when the server got to send them."""
        return self._streamed(self.request(profile, has_paid_access, rejected), on_progress)

    def varies_after_rejection(self, profile: OnboardingResponses, has_paid_access: bool, program: Any) -> bool:
        # The request after a rejection differs (it carries the reason, the note and the
        # exercises to leave out), so even greedy decoding may answer otherwise; whether it did
        # is checked on the answer.
        return True

    def repair(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        answer: Any,
        problems: str,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        """The program again, in the same conversation: the request, the answer the model gave
        (as Coach Cache read it) and what is wrong with it (core.repair)."""
        body = self.request(profile, has_paid_access, rejected)
        body["messages"] += [
            {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
            {"role": "user", "content": REPAIR_PROMPT.format(problems=problems)},
        ]
        return self._streamed(body, on_progress)

    def _streamed(self, body: dict[str, Any], on_progress: OnProgress | None) -> Generation:
        try:
            stream = self._client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
        except openai.APIError as exc:
            raise GenerationError(self.describe(exc)) from None
        answer = _Answer(self.model)
        with stream, _Deadline(stream.response, self.timeout_seconds) as deadline:
            self._read(stream, answer, ProgressReporter(on_progress), deadline)
        return self._generation(answer)

    def from_completion(self, completion: ChatCompletion) -> Generation:
        """The program of an unstreamed answer to `request` (a Batch API result line's
        body), or GenerationError saying what is wrong with it, with its billed tokens."""
        return self._generation(_Answer.of(completion, self.model))

    def _generation(self, answer: _Answer) -> Generation:
        try:
            program = self._program_from(answer)
        except GenerationError as exc:
            raise answer.failed(str(exc)) from None
        return Generation(program=program, model=answer.model, billed=answer.tokens)

    def _read(
        self, stream: Iterable[ChatCompletionChunk], answer: _Answer, progress: ProgressReporter, deadline: _Deadline
    ) -> None:
        """The stream's chunks into `answer`, until it ends or `deadline` cuts it."""
        try:
            for chunk in stream:
                answer.add(chunk)
                if chunk.choices and chunk.choices[0].delta.content:
                    progress.written(lambda: answer.content)
        except openai.APITimeoutError:
            raise answer.failed(TIMED_OUT) from None
        except openai.APIConnectionError:
            if deadline.passed:
                raise answer.failed(TIMED_OUT) from None
            raise answer.failed("the connection to the LLM server dropped before the answer was complete") from None
        except openai.APIError as exc:
            said = one_line(_redacted(_server_message(exc.body) or exc.message, self._api_key))
            raise answer.failed(f"the LLM server stopped the answer with an error: {said}") from None

    def missing_model_warning(self) -> str | None:
        """A warning when the server does not serve `model` (a vLLM or Ollama server knows
        only the names it was started with), so the operator hears it before the first
        generation fails; None when it is listed or the list cannot be had."""
        try:
            served = [m.id for m in self._client.with_options(max_retries=0, timeout=5).models.list()]
        except openai.APIError:
            return None
        if not served or _serves(served, self.model):
            return None
        shown = ", ".join(sorted(served)[:10])
        return f"the LLM server does not list OPENAI_MODEL={self.model}; it serves: {shown}"

    def describe(self, exc: openai.APIError) -> str:
        """What failed, in one line: for an HTTP error the server's own message (OpenAI's names
        the offending schema path), never the API key."""
        if isinstance(exc, openai.APITimeoutError):
            return TIMED_OUT
        if isinstance(exc, openai.APIConnectionError):
            return "could not connect to the LLM server"
        if isinstance(exc, openai.APIStatusError):
            said = one_line(_redacted(_server_message(exc.body), self._api_key))
            line = f"the LLM server answered HTTP {exc.status_code}" + (f": {said}" if said else "")
            cause = self._likely_cause(exc.status_code, said)
            return f"{line} ({cause})" if cause else line
        return f"the LLM call failed: {type(exc).__name__}"

    def _likely_cause(self, status: int, said: str) -> str | None:
        """What an operator pointing Coach Cache at their own server most likely has to change,
        when the answer says little: llama-cpp-python's server answers a `json_schema` response
        format with a 500, other servers refuse it with a 4xx naming it."""
        if not self._elsewhere:
            return None
        if status >= 500 or (400 <= status < 500 and re.search(r"json_schema|response_format", said, re.I)):
            return (
                "the server may not support a json_schema response format (structured output): "
                "llama.cpp's llama-server, vLLM and Ollama do; with a server that holds it to OpenAI's "
                "strict rules, set LLM_SCHEMA=strict"
            )
        return None

    def _program_from(self, answer: _Answer) -> Any:
        if not answer.chosen:
            raise GenerationError("the LLM answered with no choices")
        if answer.refusal:
            raise GenerationError(f"the LLM refused: {one_line(answer.refusal)}")
        if answer.finish_reason == "length":
            raise GenerationError(
                f"the LLM's answer was cut off at {self.cap_parameter}={self.max_completion_tokens} "
                "(raise LLM_MAX_COMPLETION_TOKENS)"
            )
        if answer.finish_reason == "content_filter":
            raise GenerationError("the LLM server's content filter stopped the answer")
        if answer.finish_reason is None:
            # A server that closes the connection mid-answer without an HTTP error.
            raise GenerationError("the LLM server's answer ended before it was complete")
        try:
            return numbered(json.loads(answer.content))
        except json.JSONDecodeError:
            raise GenerationError("the LLM answered with malformed JSON") from None


class _Deadline:
    """A streamed answer's end `seconds` after it began, whatever arrives meanwhile: the
    SDK's own timeout is only the longest pause between reads, and a server (or a proxy)
    that sends SSE comments (`: keepalive`) pauses never and yields no chunk, so no check
    between chunks would ever run. At the deadline a timer shuts the connection's socket
    down; the read in progress fails at once, and `passed` says why."""

    def __init__(self, response: httpx2.Response, seconds: float) -> None:
        self.passed = False
        network = response.extensions.get("network_stream")
        self._socket: socket.socket | None = network.get_extra_info("socket") if network else None
        self._response = response
        self._over = threading.Lock()  # held while cutting, and once the stream is read
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._timer.cancel()
        self._over.acquire()  # a cut under way ends first; none starts after

    def _cut(self) -> None:
        if not self._over.acquire(blocking=False):
            return
        self.passed = True
        try:
            if self._socket is not None:
                # The plain socket's shutdown, under TLS too: it wakes the reader blocked in recv().
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            else:
                self._response.close()
        except OSError:
            pass  # closed meanwhile
        finally:
            self._over.release()


class _Answer:
    """A streamed answer as its chunks have told it so far: the first choice's content and
    refusal, how it finished, and the usage (the stream's last chunk, when it gets there)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.chosen = False
        self.finish_reason: str | None = None
        self.tokens: Billed = NOT_BILLED  # until the usage chunk comes
        self._content: list[str] = []
        self._refusal: list[str] = []

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def refusal(self) -> str:
        return "".join(self._refusal)

    @classmethod
    def of(cls, completion: ChatCompletion, model: str) -> _Answer:
        """An unstreamed answer, told as one chunk would tell it."""
        answer = cls(completion.model or model)
        answer.tokens = _billed(completion.usage)
        if completion.choices:
            answer.chosen = True
            choice = completion.choices[0]
            answer._content.append(choice.message.content or "")
            answer._refusal.append(choice.message.refusal or "")
            answer.finish_reason = choice.finish_reason
        return answer

    def add(self, chunk: ChatCompletionChunk) -> None:
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.tokens = _billed(chunk.usage)
        if not chunk.choices:
            return
        self.chosen = True
        choice = chunk.choices[0]
        if choice.delta.content:
            self._content.append(choice.delta.content)
        if choice.delta.refusal:
            self._refusal.append(choice.delta.refusal)
        self.finish_reason = choice.finish_reason or self.finish_reason

    def failed(self, message: str) -> GenerationError:
        """`message` as the generation's failure, with the tokens billed as far as known."""
        return GenerationError(message, billed=self.tokens)


# Where OpenAI's usage reports each kind of token billed (core.prices.Billed). The details
# are optional: a server that does not report them leaves those kinds unknown.
USAGE_FIELDS = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "cached_tokens": "prompt_tokens_details.cached_tokens",
    "reasoning_tokens": "completion_tokens_details.reasoning_tokens",
}


def reported_usage(usage: CompletionUsage | None) -> dict[str, int | None]:
    """Each kind's count as `usage` reports it, by where it reports it (None: not reported)."""
    return {path: _reported(usage, path) for path in USAGE_FIELDS.values()}


def _reported(usage: CompletionUsage | None, path: str) -> int | None:
    found: Any = usage
    for name in path.split("."):
        found = None if found is None else getattr(found, name)
    return found if isinstance(found, int) else None


def _billed(usage: CompletionUsage | None) -> Billed:
    if usage is None:
        return NOT_BILLED
    return Billed(**{kind: _reported(usage, path) for kind, path in USAGE_FIELDS.items()})


def _serves(served: list[str], model: str) -> bool:
    # Ollama lists `name:tag` and serves a bare name as its `latest` tag.
    return model in served or (":" not in model and f"{model}:latest" in served)


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


def one_line(text: str) -> str:
    collapsed = re.sub(r"\s+", " ", text).strip()
    return collapsed if len(collapsed) <= SERVER_MESSAGE_CHARS else collapsed[: SERVER_MESSAGE_CHARS - 1] + "…"
