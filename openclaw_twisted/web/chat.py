"""A chat completions request body → the agent run it asks for (CONTRACT §4.2, §4.3)."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .. import _json as strict_json
from ..agents.events import RunRequest
from ..agents.roster import INVALID_MODEL, Roster, RouteError
from ..agents.store import USER_MAX_CHARS, session_key_error
from ..config import ChatCompletionsConfig
from ..providers.interface import Image, Sampling

MISSING_USER_MESSAGE = "Missing user message in `messages`."
INVALID_IMAGE = "Invalid image_url content in `messages`."
IMAGE_ONLY_TEXT = "User sent image(s) with no text."
HISTORY_HEADER = "[Chat messages since your last reply - for context]"
CURRENT_HEADER = "[Current message - respond to this]"

_DATA_URI = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),(.*)", re.IGNORECASE | re.DOTALL)
_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "image/jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "image/png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/gif": lambda b: b[:6] in (b"GIF87a", b"GIF89a"),
    "image/webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
}


class InvalidRequest(Exception):
    """A 400: the message a client sees, and the request field it is about."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@attrs.frozen
class ChatRequest:
    """A validated request: the run to start, and how to answer."""

    run: RunRequest
    #: The request's ``model`` string, echoed in every response and chunk.
    model: str
    stream: bool = False
    include_usage: bool = False


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body (empty = ``{}``); L{InvalidRequest} otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("Request body is not valid UTF-8.") from None
    if not text.strip():
        return {}
    try:
        value = strict_json.loads(text)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return value


def parse_chat(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    roster: Roster,
    config: ChatCompletionsConfig,
    *,
    persist_ephemeral: bool = False,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> ChatRequest:
    """
    Validate ``body`` (and the ``x-openclaw-*`` ``headers``, lower-case names) into a run.

    Raises L{InvalidRequest} for anything a client must fix; the agent never runs then.
    """
    model = body.get("model")
    if model is None:
        model = "openclaw"
    if not isinstance(model, str):
        raise InvalidRequest(INVALID_MODEL, "model", "invalid_model")

    session_key = (headers.get("x-openclaw-session-key") or "").strip()
    if (problem := session_key_error(session_key, "x-openclaw-session-key")) is not None:
        raise InvalidRequest(problem, "x-openclaw-session-key", "too_long")
    user = body.get("user")
    headed = (headers.get(name) for name in ("x-openclaw-agent-id", "x-openclaw-agent"))
    try:
        route = roster.route(
            "openai",
            session_key=headers.get("x-openclaw-session-key"),
            agent=next((h for h in headed if h and h.strip()), None),
            model=model,
            user=user if isinstance(user, str) else None,
            persist_ephemeral=persist_ephemeral,
            new_id=new_id,
        )
    except RouteError as e:
        raise InvalidRequest(e.message, e.field, e.code) from None
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("`user` must be a string.", "user", "invalid_type")
    if user is not None and (problem := session_key_error(user, "user", USER_MAX_CHARS)):
        raise InvalidRequest(problem, "user", "too_long")

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest(
                "`stream_options` must be an object.", "stream_options", "invalid_type"
            )
        flag = options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise InvalidRequest(
                "`stream_options.include_usage` must be a boolean.",
                "stream_options.include_usage",
                "invalid_type",
            )
        include_usage = bool(flag)

    message, extra, images = build_prompt(body.get("messages"), config)
    persist = route.persist
    run = RunRequest(
        agent_id=route.agent_id,
        session_key=route.session_key,
        message=message,
        images=images,
        extra_system_prompt=extra,
        sampling=parse_sampling(body),
        persist=persist,
        # A stateless stream is written out as it goes: nobody reads the whole answer after.
        keep_text=persist or not stream,
        stream=bool(stream),
    )
    return ChatRequest(run, model, bool(stream), include_usage)


# ---------------------------------------------------------------------------------------
# Messages


@attrs.frozen
class _Entry:
    role: str  # user | assistant | tool
    label: str
    text: str
    images: tuple[Any, ...] = ()  # the raw image_url parts (user entries only)


def message_text(content: Any) -> str:
    """A string, or the ``text``/``input_text`` parts joined with newlines; trimmed."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        texts = [
            p["text"]
            for p in content
            if isinstance(p, dict)
            and p.get("type") in ("text", "input_text")
            and isinstance(p.get("text"), str)
        ]
        return "\n".join(texts).strip()
    return ""


def build_prompt(
    messages: Any, config: ChatCompletionsConfig
) -> tuple[str, str, tuple[Image, ...]]:
    """OpenClaw's rules: (agent message, extra system prompt, images of the current turn)."""
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be an array.", "messages", "invalid_type")
    system: list[str] = []
    entries: list[_Entry] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"`messages[{i}]` must be an object.", "messages", "invalid_type")
        role = msg.get("role")
        role = role.strip().lower() if isinstance(role, str) else ""
        text = message_text(msg.get("content"))
        if role in ("system", "developer"):
            if text:
                system.append(text)
            continue
        if role == "function":
            role = "tool"
        if role not in ("user", "assistant", "tool"):
            continue
        parts: tuple[Any, ...] = ()
        if role == "user" and isinstance(msg.get("content"), list):
            parts = tuple(
                p for p in msg["content"] if isinstance(p, dict) and p.get("type") == "image_url"
            )
        if not text and not parts:
            continue
        name = msg.get("name")
        name = name.strip() if isinstance(name, str) else ""
        label = {"user": "User", "assistant": "Assistant"}.get(role) or (
            f"Tool:{name}" if name else "Tool"
        )
        entries.append(_Entry(role, label, text, parts))

    current_at = next(
        (i for i in range(len(entries) - 1, -1, -1) if entries[i].role in ("user", "tool")),
        len(entries) - 1,
    )
    if current_at < 0:
        raise InvalidRequest(MISSING_USER_MESSAGE, "messages", "missing_user_message")
    current = entries[current_at]
    images = decode_images(current.images, config) if current.role == "user" else ()
    text = current.text or (IMAGE_ONLY_TEXT if images else "")
    if not text:
        raise InvalidRequest(MISSING_USER_MESSAGE, "messages", "missing_user_message")
    history = [e for e in entries[:current_at] if e.text]
    if not history:
        message = text
    else:
        lines = [f"{e.label}: {e.text}" for e in history]
        message = "\n".join(
            [HISTORY_HEADER, *lines, "", CURRENT_HEADER, f"{current.label}: {text}"]
        )
    return message, "\n\n".join(system), images


def decode_images(parts: tuple[Any, ...], config: ChatCompletionsConfig) -> tuple[Image, ...]:
    """The ``image_url`` parts as images, within the configured limits; 400 otherwise."""
    if not parts:
        return ()
    if len(parts) > config.max_image_parts:
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    images: list[Image] = []
    total = 0
    for part in parts:
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url.strip():
            raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
        url = url.strip()
        if url[:5].lower() != "data:":
            images.append(_remote_image(url, config))
            continue
        image = _data_image(url, config)
        total += len(image.data)
        if total > config.max_total_image_bytes:
            raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
        images.append(image)
    return tuple(images)


def _data_image(url: str, config: ChatCompletionsConfig) -> Image:
    m = _DATA_URI.fullmatch(url)
    if m is None:
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    mime = m.group(1).strip().lower()
    mime = "image/jpeg" if mime == "image/jpg" else mime
    params = [p.strip().lower() for p in m.group(2).split(";") if p.strip()]
    if "base64" not in params or mime not in config.images.allowed_mimes:
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    payload = re.sub(r"\s+", "", m.group(3))
    # Refuse before decoding what could only decode to too many bytes.
    if len(payload) * 3 // 4 > config.images.max_bytes + 3:
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image") from None
    sniff = _MAGIC.get(mime)
    if not data or len(data) > config.images.max_bytes or (sniff is not None and not sniff(data)):
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    return Image(mime, data)


def _remote_image(url: str, config: ChatCompletionsConfig) -> Image:
    if not config.images.allow_url or not re.match(r"https?://[^/\s]+", url, re.IGNORECASE):
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or ""
    if mime and mime not in config.images.allowed_mimes:
        raise InvalidRequest(INVALID_IMAGE, "messages", "invalid_image")
    return Image(mime or "image/*", url=url)


# ---------------------------------------------------------------------------------------
# Sampling


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidRequest(
            f"`{name}` must be a number between {lo:g} and {hi:g}.", name, "invalid_value"
        )
    return float(value)


#: The largest token limit passed on: providers take a signed 32-bit count.
MAX_TOKENS = 2**31 - 1
#: OpenAI documents ``seed`` as a signed 64-bit integer.
SEED_RANGE = (-(2**63), 2**63 - 1)


def _integer(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 100.0 and 1e3 are integers too
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(
            f"`{name}` must be an integer between {lo} and {hi}.", name, "invalid_value"
        )
    return value


def parse_sampling(body: Mapping[str, Any]) -> Sampling:
    """The sampling fields, validated; ``max_completion_tokens`` wins over ``max_tokens``."""
    max_completion = _integer(body, "max_completion_tokens", 1, MAX_TOKENS)
    max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise InvalidRequest(
            "`stop` must be a string or an array of at most 4 strings.", "stop", "invalid_value"
        )
    return Sampling(
        max_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        stop=stops,
        seed=_integer(body, "seed", *SEED_RANGE),
        presence_penalty=_number(body, "presence_penalty", -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", -2, 2),
    )
