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
from ..providers.interface import (
    Image,
    Message,
    NamedTool,
    Sampling,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

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

    tools, choice, parallel = parse_tools(body)
    conversation: tuple[Message, ...] | None = None
    if tools or _has_tool_turns(body.get("messages")):
        conversation, extra, images = build_conversation(
            body.get("messages"), config, stateless=not route.persist
        )
        message = _last_user_text(conversation)
    else:
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
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        conversation=conversation,
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


# ---------------------------------------------------------------------------------------
# Tools, and the conversation kept as real turns


#: OpenAI's own limit on the functions of one request.
MAX_TOOLS = 128
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A function tool's optional fields: (key, type, what the 400 says it must be).
_FUNCTION_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("description", str, "a string"),
    ("parameters", dict, "a JSON schema object"),
    ("strict", bool, "a boolean"),
)


def parse_tools(
    body: Mapping[str, Any],
) -> tuple[tuple[ToolSpec, ...], ToolChoice | None, bool | None]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``, validated (OpenAI's rules)."""
    specs = parse_tool_list(body.get("tools"), _nested_function)
    choice = _tool_choice(body.get("tool_choice"), specs)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "`parallel_tool_calls` must be a boolean.", "parallel_tool_calls", "invalid_type"
        )
    return tuple(specs), choice, parallel if specs else None


def _nested_function(tool: dict[str, Any], where: str) -> tuple[Mapping[str, Any], str]:
    """Chat completions' shape: the function's fields under ``function``."""
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest(
            f"`{where}.function` must be an object.", f"{where}.function", "invalid_type"
        )
    return fn, f"{where}.function"


def parse_tool_list(
    raw: Any, function_of: Callable[[dict[str, Any], str], tuple[Mapping[str, Any], str]]
) -> list[ToolSpec]:
    """
    A ``tools`` array of function tools, validated by OpenAI's rules. ``function_of(tool,
    where)`` finds a tool's function fields and the request path they are at: under
    ``function`` (chat completions) or flat on the tool (the Responses API).
    """
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise InvalidRequest("`tools` must be an array.", "tools", "invalid_type")
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(
            f"`tools` has {len(raw)} entries; at most {MAX_TOOLS} are allowed.",
            "tools",
            "invalid_value",
        )
    specs: list[ToolSpec] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"`{where}` must be an object.", where, "invalid_type")
        kind = tool.get("type")
        if kind != "function":
            shown = f"'{kind}'" if isinstance(kind, str) and len(kind) <= 64 else "missing"
            raise InvalidRequest(
                f"`{where}.type` is {shown}; only 'function' tools are supported.",
                f"{where}.type",
                "invalid_value",
            )
        fn, at = function_of(tool, where)
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise InvalidRequest(
                f"`{at}.name` must be 1 to 64 letters, digits, '_' or '-'.",
                f"{at}.name",
                "invalid_value",
            )
        if any(s.name == name for s in specs):
            raise InvalidRequest(
                f"`{at}.name`: the function '{name}' is given twice.", f"{at}.name", "invalid_value"
            )
        for key, kind_, what in _FUNCTION_FIELDS:
            value = fn.get(key)
            if value is not None and not isinstance(value, kind_):
                field = f"{at}.{key}"
                raise InvalidRequest(f"`{field}` must be {what}.", field, "invalid_type")
        specs.append(ToolSpec(name, fn.get("description"), fn.get("parameters"), fn.get("strict")))
    return specs


def keyword_tool_choice(value: Any, specs: list[ToolSpec]) -> ToolChoice | None:
    """
    ``tool_choice`` ``auto``/``none``/``required`` (both APIs spell them alike): ``None``
    without tools, and ``required`` without tools is a 400. ``None`` is the caller's for
    anything else.
    """
    if value not in ("auto", "none", "required"):
        return None
    if value == "required" and not specs:
        raise InvalidRequest(
            "`tool_choice` 'required' needs `tools`.", "tool_choice", "invalid_value"
        )
    choice: ToolChoice | None = value if specs else None
    return choice


def _tool_choice(value: Any, specs: list[ToolSpec]) -> ToolChoice | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return keyword_tool_choice(value, specs)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("allowed_tools", "custom"):
            raise InvalidRequest(
                f"`tool_choice` of type '{kind}' is not supported; use 'auto', 'none', "
                "'required' or a function.",
                "tool_choice",
                "invalid_value",
            )
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if kind == "function" and isinstance(name, str):
            if not any(s.name == name for s in specs):
                raise InvalidRequest(
                    f"`tool_choice` names the function '{name}', which is not in `tools`.",
                    "tool_choice",
                    "invalid_value",
                )
            return NamedTool(name)
    raise InvalidRequest(
        "`tool_choice` must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        "tool_choice",
        "invalid_value",
    )


def _has_tool_turns(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    # A tool message without a ``tool_call_id`` (and ``function``) is §4.3's flattened kind.
    return any(
        isinstance(m, dict)
        and (bool(m.get("tool_calls")) or (m.get("role") == "tool" and "tool_call_id" in m))
        for m in messages
    )


def _last_user_text(conversation: tuple[Message, ...]) -> str:
    return next((m.text for m in reversed(conversation) if m.role == "user" and m.text), "")


def build_conversation(
    messages: Any, config: ChatCompletionsConfig, *, stateless: bool
) -> tuple[tuple[Message, ...], str, tuple[Image, ...]]:
    """
    The rule for a request with ``tools`` or tool turns: the conversation is given to the
    model as real turns, not flattened into one text (CONTRACT §4.3 otherwise).  System and
    developer texts still make the extra system prompt; the current entry is still the last
    ``user`` or ``tool`` entry (later ones are dropped); images are still only those of the
    current entry when it is a user's.  Assistant ``tool_calls`` and ``tool`` messages
    (``tool_call_id``) become tool-call and tool-result turns; a ``tool`` message that
    answers no call before it is refused when the request is stateless (a stateful session
    may hold the call).  Returns (the turns, the extra system prompt, the current images).
    """
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be an array.", "messages", "invalid_type")
    system: list[str] = []
    turns: list[Message] = []
    parts_of_last_user: tuple[Any, ...] = ()
    calls_seen: set[str] = set()
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"`{where}` must be an object.", "messages", "invalid_type")
        role = msg.get("role")
        role = role.strip().lower() if isinstance(role, str) else ""
        text = message_text(msg.get("content"))
        if role in ("system", "developer"):
            if text:
                system.append(text)
        elif role == "user":
            parts: tuple[Any, ...] = ()
            if isinstance(msg.get("content"), list):
                parts = tuple(
                    p
                    for p in msg["content"]
                    if isinstance(p, dict) and p.get("type") == "image_url"
                )
            if text or parts:
                turns.append(Message("user", text))
                parts_of_last_user = parts
        elif role == "assistant":
            calls = _assistant_calls(msg.get("tool_calls"), where)
            calls_seen.update(c.id for c in calls)
            if text or calls:
                turns.append(Message("assistant", text, tool_calls=calls))
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(
                    f"`{where}.tool_call_id` must name the tool call this message answers.",
                    f"{where}.tool_call_id",
                    "invalid_value",
                )
            if stateless and call_id not in calls_seen:
                raise InvalidRequest(
                    f"`{where}` answers the tool call '{call_id}', but no assistant message "
                    "before it made that call.",
                    f"{where}.tool_call_id",
                    "invalid_value",
                )
            turns.append(Message.result(call_id, text))
        elif role == "function":
            raise InvalidRequest(
                f"`{where}`: role 'function' (legacy function calling) cannot be used with "
                "tools; send 'tool' messages with a `tool_call_id`.",
                f"{where}.role",
                "invalid_value",
            )
    current_at = next(
        (i for i in range(len(turns) - 1, -1, -1) if turns[i].role in ("user", "tool")), -1
    )
    if current_at < 0:
        raise InvalidRequest(MISSING_USER_MESSAGE, "messages", "missing_user_message")
    turns = turns[: current_at + 1]
    current = turns[-1]
    images: tuple[Image, ...] = ()
    if current.role == "user":
        images = decode_images(parts_of_last_user, config)
        text = current.text or (IMAGE_ONLY_TEXT if images else "")
        if not text:
            raise InvalidRequest(MISSING_USER_MESSAGE, "messages", "missing_user_message")
        turns[-1] = Message("user", text, images)
    return tuple(turns), "\n\n".join(system), images


def _assistant_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(
            f"`{where}.tool_calls` must be an array.", f"{where}.tool_calls", "invalid_type"
        )
    calls: list[ToolCall] = []
    for j, call in enumerate(value):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        arguments = fn.get("arguments", "{}") if isinstance(fn, dict) else None
        if (
            not isinstance(call_id, str)
            or not call_id
            or call.get("type", "function") != "function"
            or not isinstance(name, str)
            or not name
            or not isinstance(arguments, str)
        ):
            raise InvalidRequest(
                f"`{at}` must be "
                '{"id": ..., "type": "function", "function": {"name": ..., "arguments": ...}} '
                "(arguments a JSON string).",
                at,
                "invalid_value",
            )
        calls.append(ToolCall(call_id, name, arguments))
    return tuple(calls)


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
