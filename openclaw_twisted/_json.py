"""The package's JSON: strict decoding of untrusted input, and the one encoder for output."""

from __future__ import annotations

import json
import re
from typing import Any

#: A ``\uD800``-``\uDFFF`` escape: only then can a decoded string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """
    ``json.loads`` that raises ``ValueError`` for everything a client can get wrong: bad
    syntax, ``NaN``/``Infinity``, nesting too deep for the parser, and strings with an
    unpaired surrogate escape (they cannot be written back out as UTF-8: not to a
    transcript, a provider or a reply).
    """
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("JSON string with an unpaired surrogate escape") from None
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    return value


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> bytes:
    """
    JSON text as UTF-8.  A lone surrogate (a provider may send one: ``"\\ud800"`` is legal
    JSON) cannot be UTF-8, so it is written as its ``\\uXXXX`` escape, which is the same
    JSON string.  Character by character, so encoding the parts of a text equals encoding it.
    """
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


def dumps(value: Any, *, indent: int | None = None) -> bytes:
    """
    ``value`` as UTF-8 JSON: compact (or indented by ``indent``), non-ASCII text as itself,
    a lone surrogate as its escape (L{utf8}).  Every frame, body and file the gateway writes
    goes through here, so none of them can fail on text a model sent.
    """
    separators = (",", ":") if indent is None else (",", ": ")
    return utf8(json.dumps(value, ensure_ascii=False, indent=indent, separators=separators))
