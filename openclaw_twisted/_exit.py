"""The exit status of every ``openclaw-twisted`` command (the table in README's CLI section)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """What the status of an ``openclaw-twisted`` (or ``twistd openclaw``) process means."""

    #: The turn completed (``gateway``: it stopped when told to).
    OK = 0
    #: The run failed: the model provider or the agent reported an error.
    RUN_FAILED = 1
    #: Fix the command or the config: a bad option, config or agent id, a request the
    #: gateway called invalid, credentials missing or refused; auth ``none`` off loopback.
    USAGE = 2
    #: The gateway is not there: cannot connect, it closed the connection or is shutting
    #: down (``agent``); the port cannot be listened on (``gateway``).
    UNAVAILABLE = 3
    #: Ctrl-C: the turn was cancelled (kept in the transcript as aborted).
    INTERRUPTED = 130
    #: Standard output was closed (``| head -c1``): the turn was cancelled. 128 + SIGPIPE.
    OUTPUT_CLOSED = 141
