"""Sessions on disk (CONTRACT §5.4): a ``sessions.json`` index and one JSONL transcript each."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFromThreads,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .._json import dumps
from ..config import normalize_agent_id
from ..providers.interface import Message
from .lanes import ILaneLock, LocalLanes, Release
from .store import ISessionStore, message_of, messages_from
from .writer import WRITERS, GroupWriter, in_thread

__all__ = ["INDEX", "INDEX_LOG", "INDEX_REFRESH_SECONDS", "WRITERS", "DiskSessionStore"]

log = Logger()

INDEX = "sessions.json"
#: Index changes since ``sessions.json`` was last rewritten, one JSON line each
#: (``{"key": ..., "entry": {sessionId, updatedAt, ...}}``). Not ``.jsonl``: OpenClaw and the
#: recovery scan take ``<id>.jsonl`` for transcripts.
INDEX_LOG = "sessions.json.log"
#: Per-session lock files, in ``<stateDir>/agents/`` (a dot: never an agent id).
SESSION_LOCKS = ".locks"
#: Lock files live in ``<stateDir>/agents/<agentId>/locks/``, beside ``sessions/`` (which
#: keeps OpenClaw's layout). The index's lock is taken (``flock``) shared to read the index or
#: append to its log, exclusive to rewrite ``sessions.json`` and drop the log, so processes
#: sharing the state dir lose no log line. Each session key has one more (named by a hash
#: of the key), held for a whole turn: processes sharing the state dir (``--workers``) run
#: one session's turns one at a time.
LOCKS = "locks"
INDEX_LOCK = "sessions.json.lock"
#: A session lock another process holds is tried again after this, doubling up to the max.
LOCK_POLL_SECONDS = 0.002
LOCK_POLL_MAX_SECONDS = 0.05
#: A session id from the index becomes a file name only if it looks like one (uuid4 here;
#: OpenClaw's own ids have the same shape). Anything else in the index is never a path.
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
#: Parsed records kept in memory, counted as (about) the bytes of their JSON lines: the
#: newest of each transcript up to a cap, and all transcripts together up to another (least
#: recently used dropped first). What is not cached is read from disk again when asked for.
CACHE_BYTES_PER_SESSION = 2 * 1024 * 1024
CACHE_BYTES = 64 * 1024 * 1024
#: ``updatedAt`` alone is logged at most this often per agent (a new session is logged at
#: once). A crash loses nothing: on load, ``updatedAt`` is raised to the transcript's mtime.
INDEX_REFRESH_SECONDS = 1.0
#: A transcript is read backwards from its end in blocks of this size, doubling up to the max.
_TAIL_BLOCK = 64 * 1024
_TAIL_BLOCK_MAX = 8 * 1024 * 1024


@attrs.define
class _Transcript:
    """A transcript as far as this process has read or written it (its newest records)."""

    path: str
    cap: int
    records: deque[dict[str, Any]] = attrs.Factory(deque)
    sizes: deque[int] = attrs.Factory(deque)
    #: Bytes of the records held, and whether older records exist that are not held.
    held: int = 0
    trimmed: bool = False
    #: Bytes of the file once every write handed out so far is done (known after each write).
    end: int = 0
    #: The file has records, or some are on their way (a header is written only once).
    started: bool = False

    def add(self, record: dict[str, Any], size: int) -> None:
        self.records.append(record)
        self.sizes.append(size)
        self.held += size
        while self.held > self.cap and len(self.records) > 1:
            self.records.popleft()
            self.held -= self.sizes.popleft()
            self.trimmed = True


@attrs.frozen
class _Read:
    """What a pool thread read of a transcript: records (oldest first) with their sizes."""

    records: list[tuple[dict[str, Any], int]]
    #: Whether records older than these exist (the read stopped before the start).
    trimmed: bool
    end: int
    bad: int = 0
    torn: int = 0


@attrs.define
class _Index:
    """One agent's session index, kept in memory (``sessions.json`` + its log)."""

    dir: str
    #: Session key -> entry. Entries are replaced, never changed in place, so a shallow
    #: copy of this dict is a snapshot a pool thread can serialise.
    entries: dict[str, dict[str, Any]]
    #: ``(mtime_ns, size)`` of ``sessions.json`` when this process last read or wrote it.
    seen: tuple[int, int] | None = None
    #: Bytes of ``sessions.json`` as written, and of the log this process has read or written.
    snapshot_bytes: int = 0
    log_bytes: int = 0
    #: Keys whose entry changed since it was last logged; rewrite ``sessions.json`` next.
    dirty: set[str] = attrs.Factory(set)
    compact: bool = False
    written_at: float = 0.0
    #: Counts this process's rewrites: a read begun before one has stale file positions.
    generation: int = 0


@attrs.frozen
class _Loaded:
    """An index (or the log's new lines) as a pool thread read it."""

    entries: dict[str, dict[str, Any]]
    seen: tuple[int, int] | None
    snapshot_bytes: int
    log_bytes: int
    #: A full load (``sessions.json`` read), not only the log's new lines.
    full: bool
    compact: bool = False
    messages: tuple[tuple[LogLevel, dict[str, Any]], ...] = ()


@implementer(ISessionStore)
class DiskSessionStore:
    """
    ``<stateDir>/agents/<agentId>/sessions/``: ``sessions.json`` maps each session key to
    ``{sessionId, updatedAt}``, and ``<sessionId>.jsonl`` is the transcript.

    Index changes are appended to ``sessions.json.log`` (one line a change); ``sessions.json``
    is rewritten, off the reactor thread, only once the log has grown as large as it (so a new
    session costs the same at 20,000 sessions as at 0, amortised) and at ``flush()``. On load
    the log is replayed over ``sessions.json``, so an OpenClaw state dir loads as it is and
    OpenClaw can read the sessions the last rewrite knew (all of them after a clean stop).

    Session keys are never file names and agent ids are normalised (``[a-z0-9_-]``), so
    neither can leave the state dir. The newest records of recent transcripts stay parsed in
    memory (bounded by ``cache_bytes``); what the cache does not hold is read from the end of
    the transcript backwards, only as far as the request needs.

    With a ``reactor`` (the gateway) every read, parse, serialisation, write and fsync of a
    file runs on its thread pool; transcript and index writes go through a group-commit
    writer (at most ``WRITERS`` jobs at once; appends to a file that arrive while it is being
    fsynced share the next write). Without one, everything runs on the caller's thread and
    every Deferred has fired on return. The cache is updated at once, so reads see an append
    before it is durable.

    Several processes may share one state dir (``--workers``): ``lanes()`` holds a session's
    lock file for a turn (and has the index checked again under it), a transcript another
    process grew is read again (its size is checked before the cache is trusted), index log
    lines are appended whole and ``sessions.json`` is rewritten under an exclusive lock.
    """

    def __init__(
        self,
        state_dir: str,
        *,
        now: Callable[[], float] = time.time,
        cache_bytes: int = CACHE_BYTES,
        cache_bytes_per_session: int = CACHE_BYTES_PER_SESSION,
        reactor: IReactorThreads | None = None,
    ) -> None:
        if reactor is not None and not IReactorFromThreads.providedBy(reactor):
            raise TypeError("the reactor must provide IReactorThreads and IReactorFromThreads")
        self.root = os.path.join(os.path.abspath(state_dir), "agents")
        self._reactor = reactor
        self._writer = GroupWriter(reactor, self._take)
        #: Per transcript path: records not yet handed to a write, and who waits for them.
        self._pending: dict[str, tuple[list[dict[str, Any]], list[Deferred[Any]]]] = {}
        #: Per index dir: who waits for the next write of that index.
        self._index_waiters: dict[str, list[Deferred[Any]]] = {}
        self._now = now
        self._cache_bytes = cache_bytes
        self._session_bytes = cache_bytes_per_session
        self._indexes: dict[str, _Index] = {}
        #: Per index dir being read by a pool thread: the calls waiting for it, in order.
        self._loading: dict[str, list[Deferred[_Index]]] = {}
        self._cache: OrderedDict[str, _Transcript] = OrderedDict()
        self._cached_bytes = 0
        #: Index dirs to check against the disk on next use even while this process writes.
        self._must_check: set[str] = set()

    # -- ISessionStore ---------------------------------------------------------------------

    def history(self, agent_id: str, session_key: str, limit: int) -> Deferred[list[Message]]:
        return self._index(agent_id).addCallback(self._history, session_key, limit)

    def transcript(self, agent_id: str, session_key: str) -> Deferred[list[dict[str, Any]]]:
        return self._index(agent_id).addCallback(self._transcript, session_key)

    def sessions(self, agent_id: str) -> Deferred[list[dict[str, Any]]]:
        def rows(index: _Index) -> list[dict[str, Any]]:
            out = [
                {"key": key, "sessionId": e["sessionId"], "updatedAt": e.get("updatedAt", 0)}
                for key, e in index.entries.items()
            ]
            return sorted(out, key=lambda r: -r["updatedAt"])

        return self._index(agent_id).addCallback(rows)

    def append(
        self, agent_id: str, session_key: str, records: list[dict[str, Any]]
    ) -> Deferred[None]:
        """Append ``records``; the Deferred fires once they are durable."""
        return self._index(agent_id).addCallback(self._append, session_key, records)

    def lanes(self) -> ILaneLock:
        """
        Lanes held across the processes sharing this state dir (``--workers``): a session's
        turn holds a lock file (``<stateDir>/agents/.locks/``, named by a hash of the key)
        after its in-process lane; under it, reads see what the other processes wrote.
        """
        return FileLanes(self)

    def _session_lock(self, session_key: str) -> _FileLock:
        digest = hashlib.sha256(session_key.encode("utf-8", "surrogatepass")).hexdigest()
        clock = self._reactor if IReactorTime.providedBy(self._reactor) else None
        return _FileLock(os.path.join(self.root, SESSION_LOCKS, digest[:32] + ".lock"), clock)

    def _recheck(self) -> None:
        """Another process may have written: each index is checked on its next use."""
        self._must_check.update(self._indexes)

    def flush(self) -> Deferred[None]:
        """
        Rewrite every index with changes not yet in ``sessions.json`` (so OpenClaw sees every
        session); fires once those and every write queued before are on disk.
        """
        for index in self._indexes.values():
            if index.dirty or index.log_bytes or index.compact:
                index.compact = True
                self._write_index(index).addErrback(
                    lambda f: log.failure("could not write a session index", f)
                )
        return self._writer.idle()

    # -- reads ----------------------------------------------------------------------------

    def _history(self, index: _Index, session_key: str, limit: int) -> Any:
        path = self._path(index, session_key)
        if path is None or limit <= 0:
            return []
        t = self._cached(path)
        if t is not None:
            found = messages_from(t.records, limit)
            if len(found) >= limit or not t.trimmed:
                return found
        return Deferred.fromCoroutine(self._read(path, limit)).addCallback(
            lambda read: messages_from([r for r, _ in read.records], limit)
        )

    def _transcript(self, index: _Index, session_key: str) -> Any:
        path = self._path(index, session_key)
        if path is None:
            return []
        t = self._cached(path)
        if t is not None and not t.trimmed:
            return [r for r in t.records if r.get("type") != "session"]
        return Deferred.fromCoroutine(self._read(path, None)).addCallback(
            lambda read: [r for r, _ in read.records if r.get("type") != "session"]
        )

    async def _read(self, path: str, messages: int | None) -> _Read:
        """
        Read the end of ``path`` on a pool thread (see ``_read_tail``), once every write
        queued for it is there; log what it skipped, cache what it got.
        """
        await self._writer.quiet(path)
        read = await in_thread(self._reactor, _read_tail, path, messages)
        if read.bad:
            log.warn("transcript {path}: skipped {n} unreadable line(s)", path=path, n=read.bad)
        if read.torn:
            # No newline after it: a write torn by a crash. It is skipped, never fatal.
            log.warn(
                "transcript {path}: skipping a torn last line ({n} bytes)", path=path, n=read.torn
            )
        # Not if an append came meanwhile (the cache is newer than what was read); else the
        # read holds at least what the cache does for the same end of file.
        cached = self._cache.get(path)
        if not self._writer.busy(path) and (cached is None or cached.end == read.end):
            if cached is not None:
                del self._cache[path]
                self._cached_bytes -= cached.held
            t = _Transcript(path, self._session_bytes, trimmed=read.trimmed, end=read.end)
            t.started = read.end > 0
            for record, size in read.records:
                t.add(record, size)
            self._keep(t)
        return read

    def _path(self, index: _Index, session_key: str) -> str | None:
        entry = index.entries.get(session_key)
        if entry is None:
            return None
        return os.path.join(index.dir, entry["sessionId"] + ".jsonl")

    def _cached(self, path: str) -> _Transcript | None:
        """The cache's view of ``path``, if it has one and the file has not changed under it."""
        t = self._cache.pop(path, None)
        if t is None:
            return None
        self._cached_bytes -= t.held
        # While records are on their way to disk the file is behind the cache: trust the
        # cache. Otherwise a size it does not expect means another process (or a person)
        # changed the file: read it again, on a pool thread, when asked.
        if not self._writer.busy(path) and _size(path) != t.end:
            return None
        self._keep(t)
        return t

    def _keep(self, t: _Transcript) -> None:
        while self._cache and self._cached_bytes + t.held > self._cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.held
        self._cache[t.path] = t
        self._cached_bytes += t.held

    # -- appends --------------------------------------------------------------------------

    def _append(self, index: _Index, session_key: str, records: list[dict[str, Any]]) -> Any:
        entry = index.entries.get(session_key)
        created = entry is None
        now_ms = int(self._now() * 1000)
        sid = entry["sessionId"] if entry is not None else str(uuid.uuid4())
        path = os.path.join(index.dir, sid + ".jsonl")
        t = self._cached(path)
        if t is None:
            # Not cached: what the file holds stays on disk until a read asks for it.
            size = _size(path)
            t = _Transcript(path, self._session_bytes, trimmed=size > 0, end=size)
            t.started = size > 0 or self._writer.busy(path)
            self._keep(t)
        if not t.started:
            # A new transcript (or one deleted behind our back) starts with a header naming
            # its key, so a lost index can be rebuilt from the transcripts alone.
            header = {
                "type": "session",
                "id": sid,
                "sessionKey": session_key,
                "agentId": _agent_of(index),
                "ts": now_ms,
            }
            records = [header, *records]
            t.started = True
        durable = self._write(path, records)
        self._cached_bytes -= t.held
        for record in records:
            t.add(record, _weight(record))
        self._cached_bytes += t.held
        updated = max([now_ms, *(int(r.get("ts") or 0) for r in records)])
        index.entries[session_key] = {**(entry or {}), "sessionId": sid, "updatedAt": updated}
        index.dirty.add(session_key)
        waits = [durable]
        if created or self._now() - index.written_at >= INDEX_REFRESH_SECONDS:
            # A new session's index entry is durable with its first turn (its transcript's
            # header would let a lost index be rebuilt, but nothing needs to be).
            written = self._write_index(index)
            if created:
                waits.append(written)
            else:
                written.addErrback(lambda f: log.failure("could not write a session index", f))
        if len(waits) == 1:
            return durable.addCallback(lambda _: None)
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: f.value.subFailure
        )

    def _write(self, path: str, records: list[dict[str, Any]]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        queued, waiters = self._pending.setdefault(path, ([], []))
        queued.extend(records)
        waiters.append(d)
        d.addCallbacks(self._wrote, self._lost, callbackArgs=(path,), errbackArgs=(path,))
        self._writer.dirty(path)
        return d

    def _wrote(self, size: int, path: str) -> int:
        t = self._cache.get(path)
        if t is not None:
            t.end = size
        return size

    def _lost(self, f: Failure, path: str) -> Failure:
        # The cache holds records that may not be on disk: read the file again next time.
        t = self._cache.pop(path, None)
        if t is not None:
            self._cached_bytes -= t.held
        return f

    def _take(self, key: str) -> tuple[Callable[[], Any], list[Deferred[Any]]]:
        """The job that writes what is queued for ``key`` (on the reactor thread)."""
        index = self._indexes.get(key)
        if index is not None:
            done: Deferred[Any] = Deferred()
            done.addCallback(self._index_written, index)
            return self._index_job(index), [done, *self._index_waiters.pop(key, [])]
        records, waiters = self._pending.pop(key)
        return (lambda: _append(key, records)), waiters

    # -- the index ------------------------------------------------------------------------

    def _dir(self, agent_id: str) -> str:
        path = os.path.join(self.root, normalize_agent_id(agent_id), "sessions")
        # normalize_agent_id leaves only [a-z0-9_-]; this guards the invariant, not input.
        if os.path.dirname(os.path.dirname(path)) != self.root:
            raise ValueError(f"agent id {agent_id!r} does not name a directory under the state dir")
        return path

    def _index(self, agent_id: str) -> Deferred[_Index]:
        """
        The agent's index, current with what other processes wrote. Reading it from disk
        happens on a pool thread; calls made meanwhile wait, and go on in the order made.
        While this process writes the index, what it holds is taken as current, unless a
        session lock was taken since (another process may have written meanwhile).
        """
        try:
            d = self._dir(agent_id)
        except ValueError:
            return fail()
        waiting = self._loading.get(d)
        if waiting is not None:
            later: Deferred[_Index] = Deferred()
            waiting.append(later)
            return later
        index = self._indexes.get(d)
        if index is None:
            if not os.path.isdir(d):
                # Nothing on disk yet: nothing to read (and reading creates nothing).
                index = self._indexes[d] = _Index(d, {})
                return succeed(index)
            return self._load(d, None)
        if self._writer.busy(d) and d not in self._must_check:
            return succeed(index)
        self._must_check.discard(d)
        if _stat(os.path.join(d, INDEX)) != index.seen:
            # Another process (the gateway, ``agent --local``, OpenClaw) rewrote it.
            return self._load(d, None)
        if _size(os.path.join(d, INDEX_LOG)) > index.log_bytes:
            # Another process logged changes: take only the lines past what we have.
            return self._load(d, index.log_bytes)
        return succeed(index)

    def _load(self, d: str, log_from: int | None) -> Deferred[_Index]:
        first: Deferred[_Index] = Deferred()
        self._loading[d] = [first]
        before = self._indexes.get(d)
        generation = before.generation if before is not None else 0
        read = in_thread(self._reactor, _read_index, d, log_from)

        def loaded(got: _Loaded) -> None:
            for level, text in got.messages:
                log.emit(level, text["format"], **text["args"])
            index = self._indexes.get(d)
            if index is None:
                index = self._indexes[d] = _Index(d, {})
            # A rewrite of ours finished meanwhile: its file positions are the newer ones.
            _merge(index, got, positions=index.generation == generation)
            for w in self._loading.pop(d):
                w.callback(index)

        def failed(f: Failure) -> None:
            for w in self._loading.pop(d):
                w.errback(f)

        read.addCallbacks(loaded, failed)
        return first

    def _write_index(self, index: _Index) -> Deferred[Any]:
        """Queue a write of ``index``; writes requested meanwhile share the next one."""
        d: Deferred[Any] = Deferred()
        self._index_waiters.setdefault(index.dir, []).append(d)
        index.written_at = self._now()
        self._writer.dirty(index.dir)
        return d

    def _index_job(self, index: _Index) -> Callable[[], Any]:
        """
        What to write for ``index`` (decided on the reactor thread): the changed entries as
        log lines, or, once the log is as large as ``sessions.json``, a new ``sessions.json``.
        Either way the serialising and writing happen in the job, on a pool thread.
        """
        known = index.log_bytes
        if index.compact or known >= index.snapshot_bytes:
            snapshot = dict(index.entries)
            seen = index.seen
            index.dirty.clear()
            index.compact = False
            return lambda: _compact(index.dir, snapshot, seen, known)
        changes = [(key, index.entries[key]) for key in index.dirty if key in index.entries]
        index.dirty.clear()
        if not changes:
            return lambda: known
        return lambda: _log_append(index.dir, changes, known)

    def _index_written(self, result: Any, index: _Index) -> None:
        if isinstance(result, _Loaded):
            # Rewritten: sessions.json holds everything; lines another process logged
            # meanwhile were taken in first.
            index.generation += 1
            _merge(index, result)
        else:
            # Never back: a read that finished meanwhile may have gone further.
            index.log_bytes = max(index.log_bytes, result)


def _agent_of(index: _Index) -> str:
    """The agent directory's name (already normalised)."""
    return os.path.basename(os.path.dirname(index.dir))


def _merge(index: _Index, got: _Loaded, *, positions: bool = True) -> None:
    """
    Take what was read from disk; where both know a key, ours wins (it is newer). With
    ``positions``, also where the read got to in ``sessions.json`` and the log.
    """
    for key, entry in got.entries.items():
        ours = index.entries.get(key)
        if ours is None:
            index.entries[key] = entry
        elif ours["sessionId"] == entry["sessionId"] and entry["updatedAt"] > ours["updatedAt"]:
            index.entries[key] = {**ours, "updatedAt": entry["updatedAt"]}
    if not positions:
        return
    if got.full:
        index.seen = got.seen
        index.snapshot_bytes = got.snapshot_bytes
        index.compact = index.compact or got.compact
    index.log_bytes = got.log_bytes


def _weight(record: dict[str, Any]) -> int:
    """About the bytes of ``record``'s JSON line, without serialising it."""
    n = 2
    for key, value in record.items():
        n += len(key) + 4
        n += len(value) + 2 if isinstance(value, str) else 24
    return n


def _json(value: Any, indent: int | None = None) -> bytes:
    """UTF-8 JSON by the package's one encoder (a lone surrogate is written escaped)."""
    return dumps(value, indent=indent)


def _line(record: dict[str, Any]) -> bytes:
    return _json(record) + b"\n"


# -- blocking work (on a pool thread when the store has a reactor) -----------------------


def _read_tail(path: str, messages: int | None) -> _Read:
    """
    The newest records of a transcript, read backwards from its end until ``messages``
    user/assistant messages are found (``None``: every record). A line that is not a JSON
    object is skipped, and so is a torn last line (no newline after it).
    """
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return _Read([], False, 0)
    with f:
        end = os.fstat(f.fileno()).st_size
        newest: list[tuple[dict[str, Any], int]] = []
        found = bad = torn = 0
        # ``rest`` holds the bytes read but not yet split, just before those already parsed.
        pos, rest, block, tail_known = end, b"", _TAIL_BLOCK, False
        complete = True
        while pos > 0:
            n = min(block, pos)
            block = min(block * 2, _TAIL_BLOCK_MAX)
            pos -= n
            f.seek(pos)
            rest = f.read(n) + rest
            if not tail_known:
                cut = rest.rfind(b"\n")
                if cut < 0 and pos > 0:
                    continue
                if rest[cut + 1 :].strip():
                    torn = len(rest) - cut - 1
                rest, tail_known = rest[: cut + 1], True
            # Whole lines: everything at the start of the file, else what follows the first
            # newline (the line before it may begin further back).
            if pos > 0:
                cut = rest.find(b"\n")
                if cut < 0:
                    continue
                lines, rest = rest[cut + 1 :], rest[: cut + 1]
            else:
                lines, rest = rest, b""
            for raw in reversed(lines.split(b"\n")):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    bad += 1
                    continue
                newest.append((record, len(raw) + 1))
                if message_of(record) is not None:
                    found += 1
                    if messages is not None and found >= messages:
                        complete = False
                        break
            if not complete:
                break
        newest.reverse()
        return _Read(newest, not complete or pos > 0, end, bad, torn)


def _append(path: str, records: list[dict[str, Any]]) -> int:
    """Write ``records`` at the end of ``path`` and fsync; the file's size after."""
    data = b"".join(_line(r) for r in records)
    new = not os.path.exists(path)
    if new:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A crash tore the last line: start on a fresh line so the fragment stays one
            # unreadable line (skipped on load) instead of swallowing this turn's first record.
            data = b"\n" + data
        _write_all(fd, data)
        os.fsync(fd)
        after = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if new:
        _fsync_dir(os.path.dirname(path))
    return after


@contextlib.contextmanager
def _index_locked(d: str, how: int) -> Iterator[None]:
    """``flock`` the index's lock file (blocking: on a pool thread, for one short job)."""
    fd = _open_lock(os.path.join(_locks(d), INDEX_LOCK))
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


def _log_append(d: str, changes: list[tuple[str, dict[str, Any]]], known: int) -> int:
    """
    Append index changes to the log and fsync. Returns how far the log is known to this
    process: its size after, if these lines follow right on ``known``; else ``known`` (other
    processes' lines came first: they are read on the next look at the index).
    """
    path = os.path.join(d, INDEX_LOG)
    data = b"".join(_line({"key": key, "entry": entry}) for key, entry in changes)
    with _index_locked(d, fcntl.LOCK_SH):
        new = not os.path.exists(path)
        # O_APPEND: every process's lines land whole at the end, never over each other.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
            after = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if new:
            _fsync_dir(d)
    return after if after - len(data) == known else known


def _compact(
    d: str, snapshot: dict[str, dict[str, Any]], seen: tuple[int, int] | None, log_from: int
) -> _Loaded:
    """
    Rewrite ``sessions.json`` from ``snapshot`` (atomically) and drop the log, holding the
    index lock exclusively. What other processes wrote is taken in first (the log past
    ``log_from``; all of ``sessions.json`` too if it is not the one this process last saw),
    and returned to be merged.
    """
    with _index_locked(d, fcntl.LOCK_EX):
        return _compact_locked(d, snapshot, seen, log_from)


def _compact_locked(
    d: str, snapshot: dict[str, dict[str, Any]], seen: tuple[int, int] | None, log_from: int
) -> _Loaded:
    os.makedirs(d, mode=0o700, exist_ok=True)
    log_path = os.path.join(d, INDEX_LOG)
    path = os.path.join(d, INDEX)
    theirs: dict[str, dict[str, Any]] = {}
    if _stat(path) != seen:
        # Another process rewrote it (and dropped the log this process read part of).
        theirs, log_from = _snapshot_entries(path), 0
    try:
        with open(log_path, "rb") as f:
            f.seek(log_from)
            _replay(f.read(), theirs)
    except FileNotFoundError:
        pass
    entries = dict(snapshot)
    for key, entry in theirs.items():
        ours = entries.get(key)
        if ours is None:
            entries[key] = entry
        elif ours["sessionId"] == entry["sessionId"] and entry["updatedAt"] > ours["updatedAt"]:
            entries[key] = {**ours, "updatedAt": entry["updatedAt"]}
    # One entry a line, serialised one at a time: a pool thread holds the GIL for the whole of
    # one json.dumps call, so a single call over 20,000 entries would stall the reactor anyway.
    data = (
        b"{\n  " + b",\n  ".join(_json(k) + b": " + _json(v) for k, v in entries.items()) + b"\n}\n"
        if entries
        else b"{}\n"
    )
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # Only once sessions.json holds every logged change may the log go (a crash before this
    # replays lines sessions.json already has, which changes nothing).
    with contextlib.suppress(FileNotFoundError):
        os.remove(log_path)
    _fsync_dir(d)
    return _Loaded(theirs, _stat(path), len(data), 0, full=True)


def _replay(data: bytes, into: dict[str, dict[str, Any]]) -> int:
    """Apply index log lines to ``into``; returns how many were unreadable."""
    bad = 0
    complete, _, _ = data.rpartition(b"\n")  # a torn last line is a change never made
    for raw in complete.split(b"\n") if complete else ():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key, entry = line["key"], line["entry"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if not (isinstance(key, str) and _good_entry(entry)):
            bad += 1
            continue
        old = into.get(key)
        if old is not None and old.get("sessionId") == entry["sessionId"]:
            entry = {**entry, "updatedAt": max(old["updatedAt"], entry["updatedAt"])}
        into[key] = entry
    return bad


def _good_entry(entry: Any) -> bool:
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("sessionId"), str)
        and _SESSION_ID.match(entry["sessionId"])
    ):
        return False
    if not isinstance(entry.get("updatedAt"), int | float):
        entry["updatedAt"] = 0
    return True


def _snapshot_entries(path: str) -> dict[str, dict[str, Any]]:
    """The good entries of a ``sessions.json`` (none if it is missing or unreadable)."""
    try:
        with open(path, "rb") as f:
            loaded = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {key: entry for key, entry in loaded.items() if _good_entry(entry)}


def _read_index(d: str, log_from: int | None) -> _Loaded:
    """
    Read ``sessions.json`` and replay its log (or, given ``log_from``, only the log past it).
    If the index is missing or unreadable while transcripts exist, rebuild it from their
    headers (a corrupt file is kept aside as ``sessions.json.corrupt-<ms>``).
    """
    # Shared with other readers and appenders; never halfway through another's rewrite.
    with _index_locked(d, fcntl.LOCK_SH):
        return _read_index_locked(d, log_from)


def _read_index_locked(d: str, log_from: int | None) -> _Loaded:
    messages: list[tuple[Any, dict[str, Any]]] = []
    log_path = os.path.join(d, INDEX_LOG)
    entries: dict[str, dict[str, Any]] = {}
    if log_from is not None:
        try:
            with open(log_path, "rb") as f:
                f.seek(log_from)
                data = f.read()
        except FileNotFoundError:
            data = b""
        _replay(data, entries)
        # Up to the last whole line: a line being written now is read complete next time.
        return _Loaded(entries, None, 0, log_from + data.rfind(b"\n") + 1, full=False)
    path = os.path.join(d, INDEX)
    seen = None
    compact = False
    try:
        with open(path, "rb") as f:
            raw: bytes | None = f.read()
        seen = _stat(path)
    except FileNotFoundError:
        raw = None
    snapshot_bytes = len(raw or b"")
    if raw is not None:
        try:
            loaded = json.loads(raw)
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            loaded = {}
            compact = True
            aside = f"{path}.corrupt-{int(time.time() * 1000)}"
            try:
                os.replace(path, aside)
            except OSError as moved:
                aside = f"nowhere ({moved})"
            seen, snapshot_bytes = None, 0
            messages.append(
                (
                    LogLevel.error,
                    {
                        "format": "session index {path} is unreadable ({err}); kept as "
                        "{aside}, rebuilding it from the transcripts",
                        "args": {"path": path, "err": str(e), "aside": aside},
                    },
                )
            )
        for key, entry in loaded.items():
            if _good_entry(entry):
                entries[key] = entry
            else:
                compact = True  # the next write leaves it out of sessions.json
                messages.append(
                    (
                        LogLevel.warn,
                        {
                            "format": "session index {path}: ignoring the bad entry for {key!r}",
                            "args": {"path": path, "key": key},
                        },
                    )
                )
    try:
        with open(log_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    _replay(data, entries)
    found = _recover(d, entries)
    if found:
        compact = True
        messages.append(
            (
                LogLevel.warn,
                {
                    "format": "session index {dir}: recovered {n} session(s) from their "
                    "transcripts",
                    "args": {"dir": d, "n": found},
                },
            )
        )
    return _Loaded(
        entries,
        seen,
        snapshot_bytes,
        len(data),
        full=True,
        compact=compact,
        messages=tuple(messages),
    )


def _recover(d: str, entries: dict[str, dict[str, Any]]) -> int:
    """Add transcripts the index does not know (lost index, crash before it was written)."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return 0
    known = {e["sessionId"]: key for key, e in entries.items()}
    found = 0
    for name in names:
        sid, ext = os.path.splitext(name)
        if ext != ".jsonl" or not _SESSION_ID.match(sid):
            continue
        path = os.path.join(d, name)
        try:
            mtime_ms = int(os.stat(path).st_mtime * 1000)
        except FileNotFoundError:
            continue
        key = known.get(sid)
        if key is not None:
            # updatedAt is written lazily; the transcript's mtime is never older than it.
            entry = entries[key]
            if mtime_ms > int(entry["updatedAt"]):
                entries[key] = {**entry, "updatedAt": mtime_ms}
            continue
        key = _header_key(path)
        if key is None or key in entries:
            continue
        entries[key] = {"sessionId": sid, "updatedAt": mtime_ms}
        found += 1
    return found


def _header_key(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline(64 * 1024))
    except (OSError, ValueError):
        return None
    if isinstance(first, dict) and first.get("type") == "session":
        key = first.get("sessionKey")
        return key if isinstance(key, str) else None
    return None


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileLock:
    """
    An exclusive ``flock`` on a file, taken without blocking the reactor: tried at once, then
    again on the clock (``LOCK_POLL_SECONDS`` doubling to ``LOCK_POLL_MAX_SECONDS``) while
    another process holds it. The Deferred of ``acquire`` can be cancelled. Without a clock
    (no reactor: everything on the caller's thread) it blocks until it has the lock.
    """

    def __init__(self, path: str, clock: Any) -> None:
        self.path = path
        self._clock = clock
        self._fd: int | None = None
        self._call: IDelayedCall | None = None
        self._waiting: Deferred[None] | None = None

    def acquire(self) -> Deferred[None]:
        try:
            self._fd = _open_lock(self.path)
            if self._clock is None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                return succeed(None)
        except OSError:
            self.release()
            return fail()
        waiting = self._waiting = Deferred(lambda _: self.release())
        self._try(LOCK_POLL_SECONDS)
        return waiting

    def _try(self, wait: float) -> None:
        self._call = None
        waiting = self._waiting
        if waiting is None or self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            later = min(wait * 2, LOCK_POLL_MAX_SECONDS)
            self._call = self._clock.callLater(wait, self._try, later)
            return
        except OSError:
            self._waiting = None
            self.release()
            waiting.errback(Failure())
            return
        self._waiting = None
        waiting.callback(None)

    def release(self) -> None:
        """Let go of the lock (or stop waiting for it); safe to call more than once."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor unlocks it


def _locks(sessions_dir: str) -> str:
    """``<agent>/locks`` for ``<agent>/sessions``."""
    return os.path.join(os.path.dirname(sessions_dir), LOCKS)


def _open_lock(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


@implementer(ILaneLock)
class FileLanes:
    """
    Lanes across the processes sharing a state dir: the in-process lane first, then (for a
    session that is kept) the session's lock file, until the release. Holding it, the
    store checks its indexes against the disk before trusting them again.
    """

    def __init__(self, store: DiskSessionStore, local: ILaneLock | None = None) -> None:
        self.store = store
        self.local: ILaneLock = local if local is not None else LocalLanes()

    def acquire(
        self, key: str, shared: bool = True, on_lost: Callable[[], object] | None = None
    ) -> Deferred[Release]:
        d = self.local.acquire(key, shared, on_lost)
        if not shared:
            return d

        def locked(release_local: Release) -> Deferred[Release]:
            lock = self.store._session_lock(key)

            def held(_: object) -> Release:
                self.store._recheck()

                def release() -> Deferred[None]:
                    lock.release()
                    return release_local()

                return release

            def failed(f: Failure) -> Failure:
                release_local()
                return f

            return lock.acquire().addCallbacks(held, failed)

        return d.addCallback(locked)
