"""Strict JSON decoding for untrusted input: no lone surrogates, no unbounded recursion."""

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
