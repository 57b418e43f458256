"""The local HTTP servers the tests start (the OpenAI stand-in, listeners for hostile text):
a client that hangs up early (a timed-out SDK call, a killed process, a closed page) is
expected, and is not printed. Printed from a server thread, its traceback would land in the
stderr that an in-process CLI test is reading."""

from __future__ import annotations

from http.server import ThreadingHTTPServer
from typing import Any


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the test asserts on what was asked and answered, not on how a client left
