"""What the browser tests and `python -m bench --browser` share: Debian's Chromium as
Playwright drives it here, and a dashboard started with `streamlit run` on a free port."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from testkit.pg_server import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def dashboard(script: Path, env: dict[str, str], log: IO[bytes] | int = subprocess.DEVNULL) -> Iterator[str]:
    """`streamlit run script` from the checkout (where .streamlit/config.toml is read), until
    /_stcore/health answers ok; yields its URL and stops it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(script),
            "--server.port",
            str(port),
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"streamlit did not start on {url}")
            time.sleep(0.2)
        yield url
    finally:
        # On a loaded machine Streamlit may take longer than 10 s to shut down: then it is killed.
        stop_process(process)
