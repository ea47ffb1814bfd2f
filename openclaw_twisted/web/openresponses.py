"""A ``POST /v1/responses`` request body (OpenResponses) → the agent run it asks for."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..agents.events import RunRequest
from ..agents.roster import Roster, RouteError
from ..agents.store import USER_MAX_CHARS, session_key_error
from ..config import ChatCompletionsConfig
from ..providers.interface import Message, NamedTool, Sampling, ToolChoice, ToolSpec
from .chat import (
    INVALID_IMAGE,
    MAX_TOKENS,
    MISSING_USER_MESSAGE,
    InvalidRequest,
    _integer,
    _last_user_text,
    _number,
    build_conversation,
    build_prompt,
    keyword_tool_choice,
    parse_tool_list,
)

MISSING_INPUT = "Missing user message in `input`."
INVALID_INPUT_IMAGE = "Invalid input_image content in `input`."
#: Input items that carry nothing for the agent's prompt (reasoning is the model's own
#: output; a reference names an item this gateway does not keep).
SKIPPED_ITEMS = frozenset({"reasoning", "item_reference"})
#: How many response ids are remembered for ``previous_response_id`` (the oldest go first).
REMEMBERED_RESPONSES = 10_000


@attrs.frozen
class ResponsesRequest:
    """A validated request: the run to start, and what the Responses object echoes back."""

    run: RunRequest
    response_id: str
    #: The request's ``model`` string, echoed in the response.
    model: str
    stream: bool = False
    #: Whether the response id is remembered for a later ``previous_response_id``.
    store: bool = True
    instructions: str | None = None
    previous_response_id: str | None = None
    user: str | None = None
    #: The request's ``tool_choice`` as given (echoed), ``auto`` when unset.
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True


@attrs.frozen
class PreviousResponse:
    """Where a remembered response was answered: its agent and session."""

    agent_id: str
    session_key: str


@attrs.define
class ResponseIds:
    """The last ``limit`` response ids and their sessions, in memory (oldest forgotten first)."""

    limit: int = REMEMBERED_RESPONSES
    _ids: OrderedDict[str, PreviousResponse] = attrs.Factory(OrderedDict)

    def remember(self, response_id: str, where: PreviousResponse) -> None:
        self._ids[response_id] = where
        self._ids.move_to_end(response_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def get(self, response_id: str) -> PreviousResponse | None:
        return self._ids.get(response_id)


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def previous_response_id(body: Mapping[str, Any]) -> str | None:
    """The ``previous_response_id`` of a body (validated), or ``None``."""
    value = body.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(
            "`previous_response_id` must be a non-empty string.",
            "previous_response_id",
            "invalid_type",
        )
    if len(value) > 128:
        raise InvalidRequest(
            "`previous_response_id` is too long: it is a `resp_...` id from this gateway.",
            "previous_response_id",
            "invalid_value",
        )
    return value.strip()


def previous_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        "previous_response_id",
        "previous_response_not_found",
    )


def parse_responses(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    roster: Roster,
    config: ChatCompletionsConfig,
    *,
    response_id: str,
    previous: PreviousResponse | None = None,
    persist_ephemeral: bool = False,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> ResponsesRequest:
    """
    Validate ``body`` (and the ``x-openclaw-*`` ``headers``) into a run; ``previous`` is the
    session ``previous_response_id`` named (the caller looked it up). Images are checked by
    chat completions' limits (``config``).

    Raises L{InvalidRequest} for anything a client must fix; the agent never runs then.
    """
    model = body.get("model")
    if model is None:
        model = "openclaw"
    if not isinstance(model, str):
        raise InvalidRequest("`model` must be a string.", "model", "invalid_model")
    header_key = (headers.get("x-openclaw-session-key") or "").strip()
    if (problem := session_key_error(header_key, "x-openclaw-session-key")) is not None:
        raise InvalidRequest(problem, "x-openclaw-session-key", "too_long")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("`user` must be a string.", "user", "invalid_type")
    if user is not None and (problem := session_key_error(user, "user", USER_MAX_CHARS)):
        raise InvalidRequest(problem, "user", "too_long")
    previous_id = previous_response_id(body)
    session_key = header_key
    agent = next(
        (h for h in (headers.get(n) for n in ("x-openclaw-agent-id", "x-openclaw-agent")) if h),
        None,
    )
    if previous is not None:
        if header_key and header_key != previous.session_key:
            raise InvalidRequest(
                "`previous_response_id` belongs to another session than "
                "`x-openclaw-session-key` names.",
                "previous_response_id",
                "session_mismatch",
            )
        session_key, agent = previous.session_key, previous.agent_id
    try:
        route = roster.route(
            "openresponses",
            session_key=session_key,
            agent=agent,
            model=model,
            user=user,
            persist_ephemeral=persist_ephemeral,
            new_id=new_id,
        )
    except RouteError as e:
        raise InvalidRequest(e.message, e.field, e.code) from None

    stream = _flag(body, "stream", False)
    store = _flag(body, "store", True)
    tools, choice, parallel = parse_function_tools(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("`instructions` must be a string.", "instructions", "invalid_type")

    # A stored response can be continued: its session is kept, or the next turn would not
    # see this one. ``store: false`` is the stateless request of chat completions.
    persist = route.persist or store
    message, extra, images, conversation = _prompt(
        body.get("input"), config, structured=bool(tools), stateless=not persist
    )
    if instructions and instructions.strip():
        extra = "\n\n".join(p for p in (instructions.strip(), extra) if p)
    sampling = Sampling(
        max_tokens=_integer(body, "max_output_tokens", 1, MAX_TOKENS),
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
    )
    run = RunRequest(
        agent_id=route.agent_id,
        session_key=route.session_key,
        message=message,
        images=images,
        extra_system_prompt=extra,
        sampling=sampling,
        persist=persist,
        keep_text=persist or not stream,
        stream=stream,
        response_id=response_id if store else None,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        conversation=conversation,
    )
    return ResponsesRequest(
        run,
        response_id,
        model,
        stream,
        store,
        instructions,
        previous_id,
        user,
        body.get("tool_choice") or "auto",
        parallel is not False,
    )


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` must be a boolean.", name, "invalid_type")
    return value


def parse_function_tools(
    body: Mapping[str, Any],
) -> tuple[tuple[ToolSpec, ...], ToolChoice | None, bool | None]:
    """
    ``tools``, ``tool_choice`` and ``parallel_tool_calls`` in the Responses API's shapes
    (a function's fields flat on the tool, not under ``function``), validated by chat
    completions' rules.
    """
    specs = parse_tool_list(body.get("tools"), lambda tool, where: (tool, where))
    choice = _tool_choice(body.get("tool_choice"), specs)
    parallel = _flag(body, "parallel_tool_calls", True) if "parallel_tool_calls" in body else None
    return tuple(specs), choice, parallel if specs else None


def _tool_choice(value: Any, specs: list[ToolSpec]) -> ToolChoice | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return keyword_tool_choice(value, specs)
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if isinstance(name, str) and any(s.name == name for s in specs):
            return NamedTool(name)
        shown = f"'{name}'" if isinstance(name, str) and len(name) <= 64 else "no name"
        raise InvalidRequest(
            f"`tool_choice` names the function {shown}, which is not in `tools`.",
            "tool_choice",
            "invalid_value",
        )
    raise InvalidRequest(
        "`tool_choice` must be 'auto', 'none', 'required' or "
        '{"type": "function", "name": ...}.',
        "tool_choice",
        "invalid_value",
    )


# ---------------------------------------------------------------------------------------
# Input items → the chat messages OpenClaw's prompt rules are written for


def _prompt(
    input_: Any, config: ChatCompletionsConfig, *, structured: bool, stateless: bool
) -> tuple[str, str, tuple[Any, ...], tuple[Message, ...] | None]:
    """
    (agent message, extra system prompt, images, conversation): with ``tools`` or tool
    items the input is given to the model as real turns (chat completions' rule), else
    flattened into OpenClaw's prompt.
    """
    messages = _messages(input_, stateless=stateless)
    try:
        if structured or any(m["role"] == "tool" or "tool_calls" in m for m in messages):
            conversation, extra, images = build_conversation(messages, config, stateless=stateless)
            return _last_user_text(conversation), extra, images, conversation
        return (*build_prompt(messages, config), None)
    except InvalidRequest as e:
        # The rules are chat completions'; the field the client must fix is ``input``.
        if e.message == INVALID_IMAGE:
            raise InvalidRequest(INVALID_INPUT_IMAGE, "input", e.code) from None
        if e.message == MISSING_USER_MESSAGE:
            raise InvalidRequest(MISSING_INPUT, "input", e.code) from None
        raise InvalidRequest(e.message, "input", e.code) from None


def _messages(input_: Any, *, stateless: bool) -> list[dict[str, Any]]:
    if input_ is None:
        raise InvalidRequest(MISSING_INPUT, "input", "missing_user_message")
    if isinstance(input_, str):
        return [{"role": "user", "content": input_}]
    if not isinstance(input_, list):
        raise InvalidRequest(
            "`input` must be a string or an array of input items.", "input", "invalid_type"
        )
    messages: list[dict[str, Any]] = []
    calls_seen: set[str] = set()
    for i, item in enumerate(input_):
        if not isinstance(item, dict):
            raise InvalidRequest(f"`input[{i}]` must be an object.", "input", "invalid_type")
        kind = item.get("type", "message" if "role" in item else None)
        if not isinstance(kind, str):
            raise InvalidRequest(
                f"`input[{i}].type` must be a string such as 'message'.", "input", "invalid_type"
            )
        if kind == "message":
            messages.append(_message(item, i))
        elif kind == "function_call":
            call = _function_call(item, i)
            calls_seen.add(call["id"])
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                # One assistant turn: its text (if any) and every call it made.
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = _tool_output(item, i)
            if stateless and output["tool_call_id"] not in calls_seen:
                raise InvalidRequest(
                    f"`input[{i}]` answers the call '{output['tool_call_id']}', but no "
                    "`function_call` item before it made that call (and no stored "
                    "`previous_response_id` session holds it).",
                    "input",
                    "invalid_value",
                )
            messages.append(output)
        elif kind in SKIPPED_ITEMS:
            continue
        else:
            shown = kind if len(kind) <= 64 else kind[:64] + "..."
            raise InvalidRequest(
                f"`input[{i}]` has an unsupported type '{shown}': send `message`, "
                "`function_call` or `function_call_output` items.",
                "input",
                "invalid_value",
            )
    return messages


def _message(item: dict[str, Any], i: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(
            f"`input[{i}].role` must be 'user', 'assistant', 'system' or 'developer'.",
            "input",
            "invalid_value",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(
            f"`input[{i}].content` must be a string or an array of content parts.",
            "input",
            "invalid_type",
        )
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"`input[{i}]`: a {kind} part needs a string `text`.", "input", "invalid_type"
                )
            parts.append({"type": "input_text", "text": part["text"]})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
        elif kind == "refusal":
            continue
        elif kind == "input_file":
            raise InvalidRequest(
                "input_file parts are not supported on /v1/responses.", "input", "invalid_value"
            )
        else:
            raise InvalidRequest(
                f"`input[{i}].content` has a part that is not input_text or input_image.",
                "input",
                "invalid_value",
            )
    return {"role": role, "content": parts}


def _image_url(part: dict[str, Any]) -> Any:
    """The part's image as the URL chat completions' image checks take (a ``data:`` URI)."""
    url = part.get("image_url")
    if isinstance(url, dict):  # tolerate the chat completions spelling
        url = url.get("url")
    if isinstance(url, str):
        return url
    source = part.get("source")
    if isinstance(source, dict):
        if source.get("type") == "url":
            return source.get("url")
        if source.get("type") == "base64":
            media, data = source.get("media_type"), source.get("data")
            if isinstance(media, str) and isinstance(data, str):
                return f"data:{media};base64,{data}"
    if part.get("file_id") is not None:
        raise InvalidRequest(
            "input_image `file_id` is not supported: send the image as `image_url` (a data: URI).",
            "input",
            "invalid_image",
        )
    raise InvalidRequest(INVALID_INPUT_IMAGE, "input", "invalid_image")


def _function_call(item: dict[str, Any], i: int) -> dict[str, Any]:
    """A ``function_call`` item as the chat completions ``tool_calls`` entry it stands for."""
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not all(isinstance(v, str) and v for v in (call_id, name)) or not isinstance(arguments, str):
        raise InvalidRequest(
            f"`input[{i}]`: a function_call item needs string `call_id`, `name` and "
            "`arguments` (the arguments as JSON text).",
            "input",
            "invalid_value",
        )
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_output(item: dict[str, Any], i: int) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        output = "\n".join(
            p["text"] for p in output if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if not isinstance(output, str):
        raise InvalidRequest(
            f"`input[{i}].output` of a function_call_output must be a string.",
            "input",
            "invalid_type",
        )
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(
            f"`input[{i}].call_id` must name the function_call this output answers.",
            "input",
            "invalid_value",
        )
    return {"role": "tool", "content": output, "tool_call_id": call_id}
