"""A local OpenAI-compatible HTTP server on loopback, standing in for the LLM.

It speaks the Chat Completions wire format the real SDK sends and reads, streamed
(server-sent events, at a set pace) when the request asks for it, writes programs with the
offline coach from the profile in the request, and can misbehave on demand. Like
OpenAI, it refuses (HTTP 400, OpenAI's error body) a request whose response format breaks
the strict-mode rules, so no request the real API would refuse passes the suite."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from core.generators.offline import build_program
from core.models import parse_onboarding
from tests import openai_strict
from tests.quiet_http import QuietHTTPServer

# Every answer bills these unless told otherwise, failed ones included.
PROMPT_TOKENS, COMPLETION_TOKENS = 420, 1800


@dataclass
class Behaviour:
    # good | malformed | wrong_shape | truncated | content_filter | refusal | status | hang,
    # and for a streamed answer also cut (the connection drops half-way, no HTTP error)
    mode: str = "good"
    status: int = 500
    # Before the answer; a streamed one sends its headers first, then waits this long.
    delay_seconds: float = 0.0
    # A streamed answer's pace: a token is `chunk_chars` characters, a chunk each; None is
    # as fast as the socket takes them.
    tokens_per_second: float | None = None
    chunk_chars: int = 4
    # Answer this many first requests with HTTP `status` (and Retry-After), then behave.
    fail_first: int = 0
    retry_after: str | None = None
    # The error message in a `status` answer.
    message: str = "injected failure"
    # What GET /v1/models lists.
    served_models: tuple[str, ...] = ()
    # What each answer says it billed.
    prompt_tokens: int = PROMPT_TOKENS
    completion_tokens: int = COMPLETION_TOKENS
    # Parts of those reported in the usage's details (None: the details are left out, as
    # servers that do not report them do).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass
class FakeOpenAI:
    behaviour: Behaviour = field(default_factory=Behaviour)
    calls: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop_hanging = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                models = [{"id": m, "object": "model", "owned_by": "test"} for m in fake.behaviour.served_models]
                _send(self, 200, {"object": "list", "data": models})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
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

    def stop(self) -> None:
        self._stop_hanging.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self, behaviour: Behaviour | None = None) -> None:
        with self._lock:
            self.behaviour = behaviour or Behaviour()
            self.calls = 0
            self.requests.clear()

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], call: int) -> None:
        b = self.behaviour
        fine_tuned = str(body.get("model", "")).startswith("ft:")
        response_format = body.get("response_format")
        # As OpenAI does, only a strict schema is held to strict mode's rules; a non-strict one
        # (LLM_SCHEMA=full, for servers whose grammars enforce all of JSON Schema) is taken as is.
        strict = not isinstance(response_format, dict) or (response_format.get("json_schema") or {}).get("strict")
        found = openai_strict.violations(response_format, fine_tuned=fine_tuned) if strict is not False else []
        if found:
            return _send(handler, 400, openai_strict.error_body(response_format, found))
        if call <= b.fail_first or b.mode == "status":
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            return _send(handler, b.status, {"error": {"message": b.message, "type": "server_error"}}, headers)
        if b.mode == "hang":
            self._stop_hanging.wait(60)
            return None
        streamed = bool(body.get("stream"))
        if b.delay_seconds and not streamed:
            time.sleep(b.delay_seconds)
        request = json.loads(body["messages"][-1]["content"])
        profile = parse_onboarding(request["onboarding_responses"])
        program = build_program(profile, request["has_paid_access"])
        if b.mode == "wrong_shape":
            program["weeks"][0]["sessions"].append(program["weeks"][0]["sessions"][0])
        content = json.dumps(program)
        finish_reason, refusal = "stop", None
        if b.mode == "malformed":
            content = "{'title': 'not json'"
        elif b.mode == "truncated":
            content, finish_reason = content[: len(content) // 2], "length"
        elif b.mode == "content_filter":
            content, finish_reason = "", "content_filter"
        elif b.mode == "refusal":
            content, refusal = "", "I can't help with that."
        if streamed:
            return _stream(handler, body, content, b, finish_reason, refusal)
        return _send(handler, 200, _completion(body["model"], content, b, finish_reason, refusal))


def _stream(
    handler: BaseHTTPRequestHandler,
    body: dict[str, Any],
    content: str,
    behaviour: Behaviour,
    finish_reason: str,
    refusal: str | None,
) -> None:
    """The answer as OpenAI streams it: server-sent events over a chunked response, a delta
    of a few characters each, at the behaviour's pace; the usage in a last chunk of its own
    when the request asked for it. A `cut` answer stops half-way, as a dropped connection
    does: without the chunked body's end."""
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
    size = behaviour.chunk_chars
    pieces = [content[i : i + size] for i in range(0, len(content), size)]
    if behaviour.mode == "cut":
        pieces = pieces[: len(pieces) // 2]
    started = time.monotonic()
    for n, piece in enumerate(pieces):
        if behaviour.tokens_per_second:
            time.sleep(max(0.0, started + n / behaviour.tokens_per_second - time.monotonic()))
        chunk({"content": piece})
    if behaviour.mode == "cut":
        return
    if refusal:
        chunk({"refusal": refusal})
    chunk({}, finish_reason)
    if (body.get("stream_options") or {}).get("include_usage"):
        send(json.dumps({**_head(body["model"], "chat.completion.chunk"), "choices": [], "usage": _usage(behaviour)}))
    send("[DONE]")
    handler.wfile.write(b"0\r\n\r\n")


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
        **_head(model, "chat.completion"),
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
