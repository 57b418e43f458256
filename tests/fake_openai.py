"""A local OpenAI-compatible HTTP server on loopback, standing in for the LLM.

It speaks the Chat Completions wire format the real SDK sends and reads, streamed
(server-sent events, at a set pace) when the request asks for it, writes programs with the
offline coach from the profile in the request, and can misbehave on demand. Like
OpenAI, it refuses (HTTP 400, OpenAI's error body) a request whose response format breaks
the strict-mode rules, so no request the real API would refuse passes the suite.

It also serves the Batch API as the SDK calls it (`files.create(purpose="batch")`,
`batches.create/retrieve/cancel`, `files.content`): a batch moves on one step each time it
is polled, never with the clock, so a test decides when it ends and how (`BatchBehaviour`)."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from core.contract.models import parse_onboarding
from core.generators.offline import build_program
from tests import openai_strict
from tests.quiet_http import QuietHTTPServer

# Every answer bills these unless told otherwise, failed ones included.
PROMPT_TOKENS, COMPLETION_TOKENS = 420, 1800
# A paced stream sends a token a chunk, as OpenAI does. An unpaced one, whose arrival no test
# watches, sends bigger chunks: the SDK takes about half a millisecond of CPU to read each,
# and at a token a chunk every program the stand-in streamed cost its reader over a second.
TOKEN_CHARS, UNPACED_CHUNK_CHARS = 4, 512


@dataclass
class Behaviour:
    # good | malformed | wrong_shape | truncated | content_filter | refusal | status | hang,
    # and for a streamed answer also cut (the connection drops half-way, no HTTP error) and
    # keepalive (half the answer, then only SSE comments, as a proxy sends while the server is silent)
    mode: str = "good"
    status: int = 500
    # Before the answer; a streamed one sends its headers first, then waits this long.
    delay_seconds: float = 0.0
    # A streamed answer's pace: a token (`TOKEN_CHARS` characters) a chunk, this many a second.
    # None is as fast as the socket takes them, in chunks of `UNPACED_CHUNK_CHARS`.
    tokens_per_second: float | None = None
    # A streamed answer holds once its first session is written (writing only whitespace)
    # until `go_on()`: a test sees the partial program for as long as it needs, however busy
    # the machine.
    hold_after_first_session: bool = False
    # Answer this many first requests with HTTP `status` (and Retry-After), then behave.
    fail_first: int = 0
    retry_after: str | None = None
    # The error message in a `status` answer.
    message: str = "injected failure"
    # What GET /v1/models lists.
    served_models: tuple[str, ...] = ()
    # A core.fit rule a well-formed answer breaks (a key of BREAKING), as a model that does
    # not follow the request's schema or the prompt may write it.
    breaks: str | None = None
    # With `breaks`: an answer to a repair (a request that carries the earlier answer and
    # what failed) breaks nothing.
    mends: bool = False
    # What each answer says it billed.
    prompt_tokens: int = PROMPT_TOKENS
    completion_tokens: int = COMPLETION_TOKENS
    # Parts of those reported in the usage's details (None: the details are left out, as
    # servers that do not report them do).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    # The model an answer says wrote it (None: the one asked for), as a hostile server may.
    answered_model: str | None = None


# What OpenAI's Batch API takes, and the limits of one input file.
BATCH_ENDPOINT, COMPLETION_WINDOW = "/v1/chat/completions", "24h"
MAX_BATCH_LINES, MAX_BATCH_FILE_BYTES = 50_000, 200 * 1024 * 1024
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
# What OpenAI writes in the error file for a line a batch never ran.
NOT_RUN = {
    "expired": {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    },
    "cancelled": {
        "code": "batch_cancelled",
        "message": "This request was not executed because the batch was cancelled.",
    },
}


@dataclass
class BatchBehaviour:
    """How the next batches created run. Each batch keeps the one in force when it was created."""

    # Polls of a batch that answer `in_progress` before one answers how it ended.
    polls_in_progress: int = 1
    # completed | expired | cancelled (cancelled elsewhere, as from OpenAI's dashboard).
    outcome: str = "completed"
    # In an expired or cancelled batch, how many of its first lines ran before the end.
    completed_before_end: int = 0
    # A line whose custom_id contains one of these fails with HTTP 500.
    fail_custom_ids: frozenset[str] = frozenset()
    # A line whose custom_id contains a key is answered as that Behaviour says (its mode and
    # billed tokens); any other line as the server's own Behaviour does at the time.
    line_behaviours: dict[str, Behaviour] = field(default_factory=dict)
    # A line whose custom_id contains a key is answered a second time in the output file (each
    # answer billed), as that Behaviour says, as a server that retried it may; or, with
    # `also_errored`, also written in the error file.
    answered_twice: dict[str, Behaviour] = field(default_factory=dict)
    also_errored: frozenset[str] = frozenset()
    # Lines for custom_ids no request has, of about this many bytes each, added to the output
    # file: an output as big as a full batch's without running as many requests.
    padding_lines: int = 0
    padding_line_bytes: int = 1000
    # What polls say the batch's status is (None: the true one), as a server beyond OpenAI's
    # documented statuses may.
    said_status: str | None = None
    # OpenAI's limits for one input file; lower them to test how a big rollout is split.
    max_lines: int = MAX_BATCH_LINES
    max_file_bytes: int = MAX_BATCH_FILE_BYTES
    # The output files are shuffled with this seed, so a failing run can be replayed.
    seed: int = 0


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    behaviour: BatchBehaviour
    # The input's lines, parsed; when validation fails, `errors` instead.
    lines: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    # When each status was reached: in_progress_at, completed_at, cancelling_at, ...
    at: dict[str, int] = field(default_factory=dict)
    polls_in_progress: int = 0
    # How many lines had run when a cancel was asked for.
    ran_before_cancel: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    usage: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": next((line["body"].get("model") for line in self.lines), None),
            "errors": {"object": "list", "data": self.errors} if self.status == "failed" else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.behaviour.said_status or self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 24 * 3600,
            **{
                f"{status}_at": self.at.get(status)
                for status in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
            },
            "request_counts": {"total": len(self.lines), "completed": self.completed, "failed": self.failed},
            "usage": self.usage,
            "metadata": self.metadata,
        }


@dataclass
class FakeOpenAI:
    behaviour: Behaviour = field(default_factory=Behaviour)
    batch_behaviour: BatchBehaviour = field(default_factory=BatchBehaviour)
    # Live chat completions only: what the generator asked while a coach waited.
    calls: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: list[FakeBatch] = field(default_factory=list)
    # Lines of batches that ran (failed ones included; lines an expiry or cancel left unrun not).
    batch_lines_answered: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop_hanging = threading.Event()
        self._held = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path.startswith(("/v1/files", "/v1/batches")):
                    return fake._get(self, path)
                models = [{"id": m, "object": "model", "owned_by": "test"} for m in fake.behaviour.served_models]
                _send(self, 200, {"object": "list", "data": models})

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if path == "/v1/files":
                    return fake._upload(self, self.headers["Content-Type"], data)
                if path.startswith("/v1/batches"):
                    return fake._batch_post(self, path, json.loads(data or b"{}"))
                body = json.loads(data)
                with fake._lock:
                    fake.calls += 1
                    call = fake.calls
                    fake.requests.append(body)
                fake._answer(self, body, call)

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def go_on(self) -> None:
        """Let a stream held after its first session (Behaviour.hold_after_first_session) go on."""
        self._held.set()

    def stop(self) -> None:
        self._stop_hanging.set()
        self._held.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self, behaviour: Behaviour | None = None, batch: BatchBehaviour | None = None) -> None:
        with self._lock:
            self.behaviour = behaviour or Behaviour()
            self.batch_behaviour = batch or BatchBehaviour()
            self.calls = 0
            self._held.clear()
            self.requests.clear()
            self.files.clear()
            self.batches.clear()
            self.batch_lines_answered = 0

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], call: int) -> None:
        b = self.behaviour
        refused = _strict_refusal(body)
        if refused:
            return _send(handler, 400, refused)
        if call <= b.fail_first or b.mode == "status":
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            return _send(handler, b.status, _error(b.message, "server_error"), headers)
        if b.mode == "hang":
            self._stop_hanging.wait(60)
            return None
        streamed = bool(body.get("stream"))
        if b.delay_seconds and not streamed:
            time.sleep(b.delay_seconds)
        content, finish_reason, refusal = _written(body, b)
        if streamed:
            held = self._held if b.hold_after_first_session else None
            return _stream(handler, body, content, b, finish_reason, refusal, held)
        return _send(handler, 200, _completion(body["model"], content, b, finish_reason, refusal))

    # The Batch API. Every change to files and batches is made holding the lock: polls come
    # from several threads, and from several instances of `rollout status` at once.

    def _upload(self, handler: BaseHTTPRequestHandler, content_type: str, data: bytes) -> None:
        form = _form_fields(content_type, data)
        if "file" not in form or "purpose" not in form:
            missing = "file" if "file" not in form else "purpose"
            return _send(handler, 400, _error(f"Missing required parameter: '{missing}'.", param=missing))
        filename, content = form["file"]
        stored = StoredFile(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=filename or "upload",
            purpose=form["purpose"][1].decode(),
            content=content,
            created_at=int(time.time()),
        )
        with self._lock:
            self.files[stored.id] = stored
        _send(handler, 200, stored.document())

    def _get(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        if match := re.fullmatch(r"/v1/files/([^/]+)(/content)?", path):
            stored = self.files.get(match[1])
            if stored is None:
                return _send(handler, 404, _error(f"No such File object: {match[1]}", param="id"))
            if match[2]:
                return _send_bytes(handler, stored.content)
            return _send(handler, 200, stored.document())
        if match := re.fullmatch(r"/v1/batches/([^/]+)", path):
            with self._lock:
                batch = self._batch(match[1])
                if batch is not None:
                    self._advance(batch)
                    return _send(handler, 200, batch.document())
            return _send(handler, 404, _batch_not_found(match[1]))
        return _send(handler, 404, _error(f"Unknown request URL: GET {path}."))

    def _batch_post(self, handler: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        if path == "/v1/batches":
            with self._lock:
                status, document = self._create_batch(body)
            return _send(handler, status, document)
        if match := re.fullmatch(r"/v1/batches/([^/]+)/cancel", path):
            with self._lock:
                status, document = self._cancel(match[1])
            return _send(handler, status, document)
        return _send(handler, 404, _error(f"Unknown request URL: POST {path}."))

    def forget(self, batch_id: str) -> None:
        """The server loses the batch, as after a change of API key or organisation: from now
        on it answers 404 for it, and its files stay."""
        with self._lock:
            batch = self._batch(batch_id)
            assert batch is not None, f"no batch {batch_id} to forget"
            self.batches.remove(batch)

    def _batch(self, batch_id: str) -> FakeBatch | None:
        return next((batch for batch in self.batches if batch.id == batch_id), None)

    def _create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                return 400, _error(f"Missing required parameter: '{name}'.", param=name)
        if body["endpoint"] != BATCH_ENDPOINT:
            said = f"Invalid value for 'endpoint': '{body['endpoint']}'. This server batches only '{BATCH_ENDPOINT}'."
            return 400, _error(said, param="endpoint", code="invalid_value")
        if body["completion_window"] != COMPLETION_WINDOW:
            said = f"Invalid value for 'completion_window': '{body['completion_window']}'. Supported values are: '24h'."
            return 400, _error(said, param="completion_window", code="invalid_value")
        metadata = body.get("metadata")
        if refused := _metadata_refusal(metadata):
            return 400, _error(refused, param="metadata", code="invalid_value")
        stored = self.files.get(body["input_file_id"])
        if stored is None:
            said = f"Invalid 'input_file_id': '{body['input_file_id']}'. No such file."
            return 400, _error(said, param="input_file_id", code="invalid_value")
        if stored.purpose != "batch":
            said = f"The input file must have purpose 'batch'; '{stored.id}' has purpose '{stored.purpose}'."
            return 400, _error(said, param="input_file_id", code="invalid_value")
        behaviour = self.batch_behaviour
        lines, errors = _batch_lines(stored.content, body["endpoint"], behaviour)
        batch = FakeBatch(
            id=f"batch_{uuid.uuid4().hex}",
            input_file_id=stored.id,
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=metadata,
            behaviour=behaviour,
            lines=[] if errors else lines,
            errors=errors,
        )
        self.batches.append(batch)
        return 200, batch.document()

    def _cancel(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        batch = self._batch(batch_id)
        if batch is None:
            return 404, _batch_not_found(batch_id)
        if batch.status in ("validating", "in_progress"):
            batch.ran_before_cancel = batch.behaviour.completed_before_end if batch.status == "in_progress" else 0
            self._reach(batch, "cancelling")
        elif batch.status != "cancelling":
            return 409, _error(f"Cannot cancel a batch with status '{batch.status}'.", code="invalid_state")
        return 200, batch.document()

    def _advance(self, batch: FakeBatch) -> None:
        """One poll's step: validating -> in_progress (or failed) -> how it ends; cancelling -> cancelled."""
        if batch.status == "validating":
            if batch.errors:
                return self._reach(batch, "failed")
            self._reach(batch, "in_progress")
        if batch.status == "in_progress":
            if batch.polls_in_progress < batch.behaviour.polls_in_progress:
                batch.polls_in_progress += 1
                return None
            outcome = batch.behaviour.outcome
            ran = len(batch.lines) if outcome == "completed" else batch.behaviour.completed_before_end
            return self._finish(batch, outcome, ran)
        if batch.status == "cancelling":
            return self._finish(batch, "cancelled", batch.ran_before_cancel)
        return None

    def _reach(self, batch: FakeBatch, status: str) -> None:
        batch.status = status
        batch.at[status] = int(time.time())

    def _finish(self, batch: FakeBatch, outcome: str, ran: int) -> None:
        answered = [self._run_line(line, batch.behaviour) for line in batch.lines[:ran]]
        answered += [
            self._run_line(line, replace(batch.behaviour, line_behaviours={part: again}))
            for line in batch.lines[:ran]
            for part, again in batch.behaviour.answered_twice.items()
            if part in line["custom_id"]
        ]
        self.batch_lines_answered += len(answered)
        outputs = [record for record in answered if record["response"]["status_code"] == 200]
        errors = [record for record in answered if record["response"]["status_code"] != 200]
        errors += [_record(line["custom_id"], None, NOT_RUN[outcome]) for line in batch.lines[ran:]]
        errors += [
            _record(line["custom_id"], {"status_code": 500, "body": _error("retried", "server_error")})
            for line in batch.lines[:ran]
            if any(part in line["custom_id"] for part in batch.behaviour.also_errored)
        ]
        shuffle = random.Random(batch.behaviour.seed)
        filler = {"status_code": 200, "body": {"filler": "x" * batch.behaviour.padding_line_bytes}}
        padding = [_record(f"padding-{n}", filler) for n in range(batch.behaviour.padding_lines)]
        batch.output_file_id = self._output_file(batch, "output", _shuffled(outputs, shuffle) + padding)
        batch.error_file_id = self._output_file(batch, "error", _shuffled(errors, shuffle))
        batch.completed, batch.failed = len(outputs), len(errors)
        batch.usage = _batch_usage([record["response"]["body"]["usage"] for record in outputs])
        self._reach(batch, outcome)

    def _run_line(self, line: dict[str, Any], behaviour: BatchBehaviour) -> dict[str, Any]:
        """One line as the batch runs it. Only what shapes the answer's body applies (the modes
        good, malformed, wrong_shape, truncated, content_filter, refusal, and the tokens
        billed); a pace, a delay, a hang or a cut are about a live connection, which a batch has not."""
        custom_id, body = line["custom_id"], line["body"]
        b = next((lb for part, lb in behaviour.line_behaviours.items() if part in custom_id), self.behaviour)
        if refused := _strict_refusal(body):
            return _record(custom_id, {"status_code": 400, "body": refused})
        if body.get("stream"):
            refused = _error("Streaming is not supported in a batch.", param="stream", code="invalid_value")
            return _record(custom_id, {"status_code": 400, "body": refused})
        if any(part in custom_id for part in behaviour.fail_custom_ids):
            return _record(custom_id, {"status_code": 500, "body": _error(b.message, "server_error")})
        content, finish_reason, refusal = _written(body, b)
        completion = _completion(body["model"], content, b, finish_reason, refusal)
        return _record(custom_id, {"status_code": 200, "body": completion})

    def _output_file(self, batch: FakeBatch, kind: str, records: list[dict[str, Any]]) -> str | None:
        if not records:
            return None
        content = "".join(json.dumps(record) + "\n" for record in records).encode()
        stored = StoredFile(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            content=content,
            created_at=int(time.time()),
        )
        self.files[stored.id] = stored
        return stored.id


def _strict_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 for a request whose response format breaks strict mode's rules, if it does.
    As OpenAI does, only a strict schema is held to them; a non-strict one (LLM_SCHEMA=full,
    for servers whose grammars enforce all of JSON Schema) is taken as is."""
    fine_tuned = str(body.get("model", "")).startswith("ft:")
    response_format = body.get("response_format")
    strict = not isinstance(response_format, dict) or (response_format.get("json_schema") or {}).get("strict")
    found = openai_strict.violations(response_format, fine_tuned=fine_tuned) if strict is not False else []
    return openai_strict.error_body(response_format, found) if found else None


def _longer(program: dict[str, Any]) -> None:
    program["weeks"] += [{**week, "week": week["week"] + program["duration_weeks"]} for week in program["weeks"]]
    program["duration_weeks"] *= 2


def _first_exercise(program: dict[str, Any]) -> dict[str, Any]:
    exercise: dict[str, Any] = program["weeks"][0]["sessions"][0]["exercises"][0]
    return exercise


# How an answer breaks each core.fit rule an LLM's answer can break (its days are given by
# their place, as its weeks are numbered).
BREAKING: dict[str, Callable[[dict[str, Any]], None]] = {
    "goal": lambda p: p.update(goal="fat_loss" if p["goal"] != "fat_loss" else "endurance"),
    "experience_level": lambda p: p.update(
        experience_level="advanced" if p["experience_level"] != "advanced" else "beginner"
    ),
    "weeks": _longer,
    "session_length": lambda p: p["weeks"][0]["sessions"][0].update(duration_minutes=240),
    "reps": lambda p: _first_exercise(p).update(reps='");{"'),
    "catalogue": lambda p: _first_exercise(p).update(name="Amar"),
    "injury": lambda p: p.update(safety_notes=[]),
}


def _written(body: dict[str, Any], behaviour: Behaviour) -> tuple[str, str, str | None]:
    """What the model writes for a request, as the behaviour has it: content, finish reason, refusal."""
    # The client's answers are the first user message (a repair adds the answer and what failed).
    request = json.loads(next(m["content"] for m in body["messages"] if m["role"] == "user"))
    profile = parse_onboarding(request["onboarding_responses"])
    # Told of a rejected program, it writes another, as a model asked to does.
    rejected = (request.get("coach_rejected_the_last_program") or {}).get("its_exercises", [])
    program = build_program(profile, request["has_paid_access"], frozenset(rejected))
    if behaviour.mode == "wrong_shape":
        program["weeks"][0]["sessions"].append(program["weeks"][0]["sessions"][0])
    repairing = any(m["role"] == "assistant" for m in body["messages"])
    if behaviour.breaks is not None and not (behaviour.mends and repairing):
        BREAKING[behaviour.breaks](program)
    content = json.dumps(program)
    if behaviour.mode == "malformed":
        return "{'title': 'not json'", "stop", None
    if behaviour.mode == "truncated":
        return content[: len(content) // 2], "length", None
    if behaviour.mode == "content_filter":
        return "", "content_filter", None
    if behaviour.mode == "refusal":
        return "", "stop", "I can't help with that."
    return content, "stop", None


def _form_fields(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body's fields by name: each its filename (if a file) and bytes."""
    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


def _metadata_refusal(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > METADATA_PAIRS:
        return f"'metadata' must be an object of at most {METADATA_PAIRS} pairs."
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS or not isinstance(value, str) or len(value) > METADATA_VALUE_CHARS:
            return (
                f"'metadata' keys are at most {METADATA_KEY_CHARS} characters and its values strings of at most "
                f"{METADATA_VALUE_CHARS}; '{key[:METADATA_KEY_CHARS]}' is not."
            )
    return None


def _batch_lines(
    content: bytes, endpoint: str, behaviour: BatchBehaviour
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An input file's requests, and what makes OpenAI fail the batch in validation (its
    `errors.data`, each naming its line from 1), empty when there is nothing."""
    texts = [(n, text) for n, text in enumerate(content.decode(errors="replace").splitlines(), start=1) if text.strip()]
    if not texts:
        return [], [_batch_error("empty_file", "The batch input file is empty.")]
    if len(texts) > behaviour.max_lines:
        said = f"The batch input file has {len(texts)} requests, more than the maximum of {behaviour.max_lines}."
        return [], [_batch_error("too_many_tasks", said)]
    if len(content) > behaviour.max_file_bytes:
        # OpenAI documents the limit, not the code it fails with: this one is the stand-in's.
        said = f"The batch input file is {len(content)} bytes, more than the maximum of {behaviour.max_file_bytes}."
        return [], [_batch_error("file_too_large", said)]
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[Any] = set()
    for n, text in texts:
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            errors.append(_batch_error("invalid_json_line", "This line is not parseable as valid JSON.", line=n))
            continue
        missing = [name for name in ("custom_id", "method", "url", "body") if name not in line]
        if missing:
            said = f"Missing required parameter: '{missing[0]}'."
            errors.append(_batch_error("missing_required_parameter", said, line=n, param=missing[0]))
        elif not isinstance(line["custom_id"], str) or not isinstance(line["body"], dict):
            said = "'custom_id' must be a string and 'body' an object."
            errors.append(_batch_error("invalid_value", said, line=n, param="body"))
        elif line["method"] != "POST":
            errors.append(_batch_error("invalid_value", "'method' must be 'POST'.", line=n, param="method"))
        elif line["url"] != endpoint:
            said = f"The URL provided for this request does not match the batch endpoint '{endpoint}'."
            errors.append(_batch_error("url_mismatch", said, line=n, param="url"))
        elif line["custom_id"] in seen:
            said = (
                "The custom_id for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch."
            )
            errors.append(_batch_error("duplicate_custom_id", said, line=n, param="custom_id"))
        elif models and line["body"].get("model") not in models:
            said = "The model of this request differs from the other requests' in the batch: a batch has one model."
            errors.append(_batch_error("model_mismatch", said, line=n, param="body.model"))
        else:
            seen.add(line["custom_id"])
            models.add(line["body"].get("model"))
            lines.append(line)
    return lines, errors


def _batch_error(code: str, message: str, *, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _record(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of a batch's output or error file."""
    if response is not None:
        response = {**response, "request_id": f"req_{uuid.uuid4().hex}"}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": error}


def _shuffled(records: list[dict[str, Any]], shuffle: random.Random) -> list[dict[str, Any]]:
    """OpenAI does not keep the input's order; this server never does, so that code which
    matches results by position fails here, not only sometimes in production."""
    out = list(records)
    shuffle.shuffle(out)
    if len(out) > 1 and out == records:
        out = out[1:] + out[:1]
    return out


def _batch_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch's usage, as OpenAI sums it over the lines that completed."""

    def part(usage: dict[str, Any], details: str, name: str) -> int:
        return int((usage.get(details) or {}).get(name, 0))

    return {
        "input_tokens": sum(u["prompt_tokens"] for u in usages),
        "input_tokens_details": {
            "cached_tokens": sum(part(u, "prompt_tokens_details", "cached_tokens") for u in usages)
        },
        "output_tokens": sum(u["completion_tokens"] for u in usages),
        "output_tokens_details": {
            "reasoning_tokens": sum(part(u, "completion_tokens_details", "reasoning_tokens") for u in usages)
        },
        "total_tokens": sum(u["total_tokens"] for u in usages),
    }


def _error(
    message: str, kind: str = "invalid_request_error", *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _batch_not_found(batch_id: str) -> dict[str, Any]:
    return _error(f"No batch found with id '{batch_id}'.", param="batch_id")


def _stream(
    handler: BaseHTTPRequestHandler,
    body: dict[str, Any],
    content: str,
    behaviour: Behaviour,
    finish_reason: str,
    refusal: str | None,
    held: threading.Event | None = None,
) -> None:
    """The answer as OpenAI streams it: server-sent events over a chunked response, a delta
    of a token each at the behaviour's pace (of many when it has none); the usage in a last chunk of its own
    when the request asked for it. A `cut` answer stops half-way, as a dropped connection
    does: without the chunked body's end. With `held`, it holds once its first session is
    written, until that event is set."""
    handler.protocol_version = "HTTP/1.1"  # chunked transfer encoding, so a cut shows
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Connection", "close")
    handler.end_headers()

    def send(data: str) -> None:
        event = f"data: {data}\n\n".encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        send(json.dumps({**_head(body["model"], "chat.completion.chunk"), "choices": [choice], **extra}))

    chunk({"role": "assistant", "content": ""})
    if behaviour.delay_seconds:
        time.sleep(behaviour.delay_seconds)
    size = TOKEN_CHARS if behaviour.tokens_per_second else UNPACED_CHUNK_CHARS
    pieces = [content[i : i + size] for i in range(0, len(content), size)]
    if behaviour.mode in ("cut", "keepalive"):
        pieces = pieces[: len(pieces) // 2]
    hold_at = _first_session_end(content) if held else 0
    due, sent = time.monotonic(), 0
    for piece in pieces:
        if behaviour.tokens_per_second:
            time.sleep(max(0.0, due - time.monotonic()))
            due += 1 / behaviour.tokens_per_second
        chunk({"content": piece})
        sent += len(piece)
        if held is not None and sent >= hold_at:
            # Whitespace between JSON tokens while held, as a model may write: the answer
            # keeps growing, so the client keeps looking at what is complete.
            deadline = time.monotonic() + 60
            while not held.wait(0.1) and time.monotonic() < deadline:
                chunk({"content": " "})
            held, due = None, time.monotonic()
    if behaviour.mode == "cut":
        return
    if behaviour.mode == "keepalive":
        # A comment line every 0.1 s, each well within any read timeout, until the client leaves.
        for _ in range(600):
            comment = b": keepalive\n\n"
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(comment), comment))
            time.sleep(0.1)
        return
    if refusal:
        chunk({"refusal": refusal})
    chunk({}, finish_reason)
    if (body.get("stream_options") or {}).get("include_usage"):
        send(json.dumps({**_head(body["model"], "chat.completion.chunk"), "choices": [], "usage": _usage(behaviour)}))
    send("[DONE]")
    handler.wfile.write(b"0\r\n\r\n")


def _first_session_end(content: str) -> int:
    """Where, in `content` (a program's JSON, maybe cut short), the first session is written
    and the next one begun: from there a reader of the prefix knows the first is complete."""
    start = content.index('"sessions": [') + len('"sessions": [')
    end = json.JSONDecoder().raw_decode(content, start)[1]
    return content.index("{", end) + 1


def _head(model: str, kind: str) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": kind, "created": int(time.time()), "model": model}


def _usage(behaviour: Behaviour) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": behaviour.prompt_tokens,
        "completion_tokens": behaviour.completion_tokens,
        "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
    }
    if behaviour.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens}
    if behaviour.reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": behaviour.reasoning_tokens}
    return usage


def _completion(
    model: str, content: str, behaviour: Behaviour, finish_reason: str = "stop", refusal: str | None = None
) -> dict[str, Any]:
    return {
        **_head(behaviour.answered_model or model, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
            }
        ],
        "usage": _usage(behaviour),
    }


def _send(
    handler: BaseHTTPRequestHandler, status: int, document: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)


def _send_bytes(handler: BaseHTTPRequestHandler, content: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(content)))
    handler.end_headers()
    handler.wfile.write(content)
