"""A local OpenAI-compatible HTTP server on loopback, standing in for the LLM.

It speaks the Chat Completions wire format the real SDK sends and reads, writes programs
with the offline coach from the profile in the request, and can misbehave on demand."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.generators.offline import build_program
from core.models import parse_onboarding


@dataclass
class Behaviour:
    # good | malformed | wrong_shape | status | hang
    mode: str = "good"
    status: int = 500
    delay_seconds: float = 0.0
    # Answer this many first requests with HTTP `status` (and Retry-After), then behave.
    fail_first: int = 0
    retry_after: str | None = None


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

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.calls += 1
                    call = fake.calls
                    fake.requests.append(body)
                fake._answer(self, body, call)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
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
        if call <= b.fail_first or b.mode == "status":
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            return _send(handler, b.status, {"error": {"message": "injected failure", "type": "server_error"}}, headers)
        if b.mode == "hang":
            self._stop_hanging.wait(60)
            return None
        if b.delay_seconds:
            time.sleep(b.delay_seconds)
        request = json.loads(body["messages"][-1]["content"])
        profile = parse_onboarding(request["onboarding_responses"])
        program = build_program(profile, request["has_paid_access"])
        if b.mode == "wrong_shape":
            program["weeks"][0]["sessions"].append(program["weeks"][0]["sessions"][0])
        content = "{'title': 'not json'" if b.mode == "malformed" else json.dumps(program)
        return _send(handler, 200, _completion(body["model"], content))


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 420, "completion_tokens": 1800, "total_tokens": 2220},
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
