"""The cache entries this process has validated, so that a hit on one is not validated again."""

from __future__ import annotations

import threading
from collections import OrderedDict


class ValidatedPrograms:
    """Entry versions this process has validated, as JSON text, bounded in bytes. On
    PostgreSQL a hit on a version already validated skips fetching and validating the
    program again; any change to the row gives it a new version, which is fetched and
    validated anew. SQLite has no row versions (None): a hit there fetches the program and
    skips validating it only when its text is the one validated."""

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def known(self, key: str) -> tuple[str | None, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def remember(self, key: str, version: str | None, document: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._items[key] = (version, document)
            self._bytes += len(document)
            while self._bytes > self.max_bytes and self._items:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= len(evicted)
