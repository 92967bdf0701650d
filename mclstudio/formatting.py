"""Small text helpers shared by the command line and the studio app."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes (torch puts some in its messages)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def clip(text: str, limit: int = 160) -> str:
    """The first line of ``text`` without terminal colour codes, shortened to at most ``limit`` characters
    at a word boundary, with "..." where it was cut (a message is never cut mid-word)."""
    plain = _ANSI.sub("", text).strip()
    first = plain.splitlines()[0] if plain else ""
    if len(first) <= limit:
        return first
    head = first[: limit - 3]
    if first[limit - 3] != " " and " " in head:  # the cut fell inside a word: drop that word
        head = head.rsplit(" ", 1)[0]
    return f"{head.rstrip(' ,;:(')}..."


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message, or the exception's type name when it has none: how an
    error is told in one line (a command's `error:` line, a refusal quoting what torch or h5py said)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def finite_or_none(obj: Any) -> Any:
    """obj with every NaN or infinite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def strict_json(obj: Any, **kw: Any) -> str:
    """json.dumps that writes strict JSON: NaN and infinities become null (json.dumps would write NaN,
    which strict parsers reject); numpy scalars and other values are written through ``default``."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)
