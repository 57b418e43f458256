"""How durations and sizes read, on the pages and in core's own labels (latency bins)."""

from __future__ import annotations

from datetime import timedelta


def format_bytes(size: float | None) -> str:
    if size is None:
        return "–"
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def format_duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:,.1f} ms"
    return str(timedelta(seconds=round(ms / 1000))) if ms >= 60_000 else f"{ms / 1000:.1f} s"
