"""Sessions on disk (CONTRACT §5.4): a ``sessions.json`` index and one JSONL transcript each."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._json import dumps
from ..config import normalize_agent_id
from ..providers.interface import Message
from .store import ISessionStore, messages_from

log = Logger()

INDEX = "sessions.json"
#: A session id from the index becomes a file name only if it looks like one (uuid4 here;
#: OpenClaw's own ids have the same shape). Anything else in the index is never a path.
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
#: Parsed records kept in memory, counted as the bytes of their JSON lines: the newest of
#: each transcript up to a cap, and all transcripts together up to another (least recently
#: used dropped first). What is not cached is read from disk again when asked for.
CACHE_BYTES_PER_SESSION = 2 * 1024 * 1024
CACHE_BYTES = 64 * 1024 * 1024
#: ``updatedAt`` alone is rewritten at most this often per agent (a new session is written
#: at once). A crash loses nothing: on load, ``updatedAt`` is raised to the transcript's mtime.
INDEX_REFRESH_SECONDS = 1.0
#: At most this many write jobs (each one or more files) run at once on the reactor's pool,
#: so session writes never take every pool thread (DNS lookups use it too).
WRITERS = 4


class _Writer:
    """
    Group commit: writes run one at a time per file, off the caller's thread; what is queued
    for a file while its write + fsync is in flight goes to disk together in the next one.
    At most ``limit`` jobs run at once; each writes one or more files.

    ``take(key)`` (called on the reactor thread when a write for ``key`` may start) returns
    the blocking job and the Deferreds it settles; the job runs on the reactor's thread pool,
    its Deferreds fire on the reactor thread. Without a reactor every job runs at once, on the
    caller's thread (tests, ``agent --local`` crash tests, embedding).
    """

    def __init__(
        self,
        reactor: Any,
        take: Callable[[str], tuple[Callable[[], Any], list[Deferred[Any]]]],
        limit: int = WRITERS,
    ) -> None:
        self._reactor = reactor
        self._take = take
        self._limit = limit
        self._queued: OrderedDict[str, None] = OrderedDict()
        self._busy: set[str] = set()
        self._jobs = 0
        self._idle: list[Deferred[None]] = []

    @property
    def threaded(self) -> bool:
        return self._reactor is not None

    def busy(self, key: str) -> bool:
        return key in self._busy or key in self._queued

    def dirty(self, key: str) -> None:
        """``key`` has something to write: start a job for it now or after the one in flight."""
        if self._reactor is None:
            job, waiters = self._take(key)
            result = job()  # errors propagate to the caller in synchronous mode
            for d in waiters:
                d.callback(result)
            return
        self._queued[key] = None
        self._pump()

    def idle(self) -> Deferred[None]:
        """Fires once nothing is queued or being written."""
        if not self._queued and not self._busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _pump(self) -> None:
        # The files waiting are shared out among the free jobs: under load one job (one
        # hand-off to the pool and one back) writes many files, one fsync each.
        free = self._limit - self._jobs
        ready = [key for key in self._queued if key not in self._busy]
        if free <= 0 or not ready:
            return
        batches: list[list[tuple[str, Callable[[], Any], list[Deferred[Any]]]]] = [
            [] for _ in range(min(free, len(ready)))
        ]
        for i, key in enumerate(ready):
            del self._queued[key]
            self._busy.add(key)
            job, waiters = self._take(key)
            batches[i % len(batches)].append((key, job, waiters))
        for batch in batches:
            self._jobs += 1
            self._reactor.callInThread(self._work, batch)

    def _work(self, batch: list[tuple[str, Callable[[], Any], list[Deferred[Any]]]]) -> None:
        # On a pool thread: only the blocking I/O; every state change is on the reactor thread.
        outcomes = []
        for key, job, waiters in batch:
            try:
                outcome: Any = job()
            except BaseException:
                outcome = Failure()
            outcomes.append((key, waiters, outcome))
        self._reactor.callFromThread(self._done, outcomes)

    def _done(self, outcomes: list[tuple[str, list[Deferred[Any]], Any]]) -> None:
        self._jobs -= 1
        for key, waiters, outcome in outcomes:
            self._busy.discard(key)
            for d in waiters:
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
        self._pump()
        if not self._queued and not self._busy:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)


@attrs.define
class _Transcript:
    """A transcript as far as this process has read or written it (its newest records)."""

    path: str
    cap: int
    records: deque[dict[str, Any]] = attrs.Factory(deque)
    sizes: deque[int] = attrs.Factory(deque)
    #: Bytes of the records held, and whether older ones were dropped to stay under ``cap``.
    held: int = 0
    trimmed: bool = False
    #: Bytes parsed so far: the end of the last complete line.
    parsed: int = 0
    #: Bytes of the file; more than ``parsed`` when a torn fragment (no newline) ends it.
    end: int = 0

    def add(self, record: dict[str, Any], size: int) -> None:
        self.records.append(record)
        self.sizes.append(size)
        self.held += size
        while self.held > self.cap and len(self.records) > 1:
            self.records.popleft()
            self.held -= self.sizes.popleft()
            self.trimmed = True


@attrs.define
class _Index:
    """One agent's ``sessions.json``, kept in memory."""

    dir: str
    entries: dict[str, dict[str, Any]]
    #: ``(mtime_ns, size)`` of the file when this process last read or wrote it.
    seen: tuple[int, int] | None = None
    written_at: float = 0.0
    dirty: bool = False


@implementer(ISessionStore)
class DiskSessionStore:
    """
    ``<stateDir>/agents/<agentId>/sessions/``: ``sessions.json`` maps each session key to
    ``{sessionId, updatedAt}``, and ``<sessionId>.jsonl`` is the transcript.

    Session keys are never file names and agent ids are normalised (``[a-z0-9_-]``), so
    neither can leave the state dir. The newest records of recent transcripts stay parsed in
    memory (bounded by ``cache_bytes``); a transcript is read again only for what the cache
    does not hold or what another process appended.

    Without a ``reactor`` everything runs on the caller's thread and ``append`` returns once
    the records are fsynced (about 0.3 ms each). With one (the gateway), the write + fsync of
    transcripts and indexes run on its thread pool (``callInThread``; at most ``WRITERS``
    files at once) and ``append`` returns a Deferred that fires once the records are durable;
    appends to a file that arrive while it is being fsynced share the next write + fsync
    (group commit; order within a file is kept). The cache is updated at once, so reads see
    an append before it is durable; ``flush()`` then returns a Deferred that fires once every
    write queued before it is on disk.
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
        self._writer = _Writer(reactor, self._take)
        #: Per transcript path: data not yet handed to a write, and who waits for it.
        self._pending: dict[str, tuple[list[bytes], list[Deferred[Any]]]] = {}
        #: Per index dir: who waits for the next write of that index.
        self._index_waiters: dict[str, list[Deferred[Any]]] = {}
        self._now = now
        self._cache_bytes = cache_bytes
        self._session_bytes = cache_bytes_per_session
        self._indexes: dict[str, _Index] = {}
        self._cache: OrderedDict[str, _Transcript] = OrderedDict()
        self._cached_bytes = 0

    # -- ISessionStore ---------------------------------------------------------------------

    def history(self, agent_id: str, session_key: str, limit: int) -> list[Message]:
        t = self._open(agent_id, session_key)
        if t is None:
            return []
        found = messages_from(t.records, limit)
        if len(found) < limit and t.trimmed:
            found = messages_from(_read_all(t.path), limit)
        return found

    def transcript(self, agent_id: str, session_key: str) -> list[dict[str, Any]]:
        t = self._open(agent_id, session_key)
        if t is None:
            return []
        records = _read_all(t.path) if t.trimmed else t.records
        return [r for r in records if r.get("type") != "session"]

    def sessions(self, agent_id: str) -> list[dict[str, Any]]:
        index = self._index(agent_id)
        rows = [
            {"key": key, "sessionId": e["sessionId"], "updatedAt": e.get("updatedAt", 0)}
            for key, e in index.entries.items()
        ]
        return sorted(rows, key=lambda r: -r["updatedAt"])

    def append(
        self, agent_id: str, session_key: str, records: list[dict[str, Any]]
    ) -> Deferred[None] | None:
        """
        Append ``records``; durable when this returns (no reactor) or when the returned
        Deferred fires (with a reactor: see the class docstring).
        """
        index = self._index(agent_id)
        entry = index.entries.get(session_key)
        created = entry is None
        now_ms = int(self._now() * 1000)
        if entry is None:
            entry = {"sessionId": str(uuid.uuid4())}
        path = os.path.join(index.dir, entry["sessionId"] + ".jsonl")
        t = self._cached(path)
        if t.end == 0:
            # A new transcript (or one deleted behind our back) starts with a header naming
            # its key, so a lost index can be rebuilt from the transcripts alone.
            header = {
                "type": "session",
                "id": entry["sessionId"],
                "sessionKey": session_key,
                "agentId": normalize_agent_id(agent_id),
                "ts": now_ms,
            }
            records = [header, *records]
        lines = [_line(r) for r in records]
        data = b"".join(lines)
        if t.end > t.parsed:
            # A crash tore the last line: start on a fresh line so the fragment stays one
            # unreadable line (skipped on load) instead of swallowing this turn's first record.
            data = b"\n" + data
        durable = self._write(path, data)
        self._cached_bytes -= t.held
        for record, line in zip(records, lines, strict=True):
            t.add(record, len(line))
        self._cached_bytes += t.held
        t.parsed = t.end = t.end + len(data)
        entry["updatedAt"] = max([now_ms, *(int(r.get("ts") or 0) for r in records)])
        index.entries[session_key] = entry
        index.dirty = True
        waits = [durable]
        if created or self._now() - index.written_at >= INDEX_REFRESH_SECONDS:
            # A new session's index entry is durable with its first turn (its transcript's
            # header would let a lost index be rebuilt, but nothing needs to be).
            written = self._write_index(index)
            if created:
                waits.append(written)
            else:
                written.addErrback(lambda f: log.failure("could not write a session index", f))
        if not self._writer.threaded:
            return None
        if len(waits) == 1:
            return waits[0].addCallback(lambda _: None)
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: f.value.subFailure
        )

    def flush(self) -> Deferred[None] | None:
        """
        Write every index that has unwritten ``updatedAt`` changes; with a reactor, the
        Deferred fires once those and every write queued before are on disk.
        """
        for index in self._indexes.values():
            if index.dirty:
                self._write_index(index).addErrback(
                    lambda f: log.failure("could not write a session index", f)
                )
        return self._writer.idle() if self._writer.threaded else None

    # -- writes ---------------------------------------------------------------------------

    def _write(self, path: str, data: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        chunks, waiters = self._pending.setdefault(path, ([], []))
        chunks.append(data)
        waiters.append(d)
        if self._writer.threaded:
            d.addErrback(self._lost, path)
        self._writer.dirty(path)
        return d

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
            seen: Deferred[Any] = Deferred()
            seen.addCallback(lambda stat: setattr(index, "seen", stat))
            return self._index_job(index), [seen, *self._index_waiters.pop(key, [])]
        chunks, waiters = self._pending.pop(key)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return (lambda: _append(key, data)), waiters

    # -- the index ------------------------------------------------------------------------

    def _dir(self, agent_id: str) -> str:
        path = os.path.join(self.root, normalize_agent_id(agent_id), "sessions")
        # normalize_agent_id leaves only [a-z0-9_-]; this guards the invariant, not input.
        if os.path.dirname(os.path.dirname(path)) != self.root:
            raise ValueError(f"agent id {agent_id!r} does not name a directory under the state dir")
        return path

    def _index(self, agent_id: str) -> _Index:
        d = self._dir(agent_id)
        index = self._indexes.get(d)
        if index is None:
            index = self._indexes[d] = _load_index(d)
        elif not self._writer.busy(d) and _stat(os.path.join(d, INDEX)) not in (index.seen, None):
            # Another process (the gateway, or ``agent --local``) wrote it: take its sessions.
            _merge(index, _load_index(d))
        return index

    def _write_index(self, index: _Index) -> Deferred[Any]:
        """Queue a write of ``index``; writes requested meanwhile share the next one."""
        d: Deferred[Any] = Deferred()
        self._index_waiters.setdefault(index.dir, []).append(d)
        index.written_at = self._now()
        self._writer.dirty(index.dir)
        return d

    def _index_job(self, index: _Index) -> Callable[[], tuple[int, int] | None]:
        """Snapshot ``index`` (on the reactor thread); the job writes it atomically."""
        path = os.path.join(index.dir, INDEX)
        disk = _stat(path)
        if disk is not None and disk != index.seen:
            _merge(index, _load_index(index.dir))
        data = _json(index.entries, indent=2)
        index.dirty = False

        def job() -> tuple[int, int] | None:
            os.makedirs(index.dir, mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(index.dir)
            return _stat(path)

        return job

    # -- transcripts ----------------------------------------------------------------------

    def _open(self, agent_id: str, session_key: str) -> _Transcript | None:
        index = self._index(agent_id)
        entry = index.entries.get(session_key)
        if entry is None:
            return None
        return self._cached(os.path.join(index.dir, entry["sessionId"] + ".jsonl"))

    def _cached(self, path: str) -> _Transcript:
        t = self._cache.pop(path, None)
        if t is not None:
            self._cached_bytes -= t.held
        # While records are on their way to disk the file is behind the cache: trust the cache.
        size = t.end if t is not None and self._writer.busy(path) else _size(path)
        if t is None or size < t.end:
            t = _Transcript(path, self._session_bytes)
            if size:
                _read_from(t)
        elif size > t.end:
            # Another process appended (or a fragment grew): parse only what is new.
            _read_from(t)
        while self._cache and self._cached_bytes + t.held > self._cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.held
        self._cache[path] = t
        self._cached_bytes += t.held
        return t


def _json(value: Any, indent: int | None = None) -> bytes:
    """UTF-8 JSON by the package's one encoder (a lone surrogate is written escaped)."""
    return dumps(value, indent=indent)


def _line(record: dict[str, Any]) -> bytes:
    return _json(record) + b"\n"


def _read_from(t: _Transcript) -> None:
    """Parse the transcript from ``t.parsed``; a line that is not a JSON object is skipped."""
    try:
        with open(t.path, "rb") as f:
            f.seek(t.parsed)
            data = f.read()
    except FileNotFoundError:
        return
    complete, _, fragment = data.rpartition(b"\n")
    bad = 0
    for raw in complete.split(b"\n") if complete else ():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict):
            t.add(record, len(raw) + 1)
        else:
            bad += 1
    if bad:
        log.warn("transcript {path}: skipped {n} unreadable line(s)", path=t.path, n=bad)
    if fragment.strip():
        # No newline after it: a write torn by a crash. It is skipped, never fatal.
        log.warn(
            "transcript {path}: skipping a torn last line ({n} bytes)",
            path=t.path,
            n=len(fragment),
        )
    t.parsed += len(data) - len(fragment)
    t.end = t.parsed + len(fragment)


def _read_all(path: str) -> list[dict[str, Any]]:
    """Every record of a transcript, read afresh (for what the cache no longer holds)."""
    t = _Transcript(path, cap=2**62)
    _read_from(t)
    return list(t.records)


def _load_index(d: str) -> _Index:
    """
    Read ``sessions.json``. If it is missing or unreadable while transcripts exist, rebuild it
    from their headers (a corrupt file is kept aside as ``sessions.json.corrupt-<ms>``).
    """
    path = os.path.join(d, INDEX)
    index = _Index(d, {})
    try:
        with open(path, "rb") as f:
            raw = f.read()
        index.seen = _stat(path)
    except FileNotFoundError:
        raw = None
    entries: dict[str, Any] | None = None
    if raw is not None:
        try:
            loaded = json.loads(raw)
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            entries = loaded
        except ValueError as e:
            aside = f"{path}.corrupt-{int(time.time() * 1000)}"
            try:
                os.replace(path, aside)
            except OSError as moved:
                aside = f"nowhere ({moved})"
            log.error(
                "session index {path} is unreadable ({err}); kept as {aside}, rebuilding it "
                "from the transcripts",
                path=path,
                err=str(e),
                aside=aside,
            )
    for key, entry in (entries or {}).items():
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("sessionId"), str)
            and _SESSION_ID.match(entry["sessionId"])
        ):
            if not isinstance(entry.get("updatedAt"), int | float):
                entry["updatedAt"] = 0
            index.entries[key] = entry
        else:
            log.warn("session index {path}: ignoring the bad entry for {key!r}", path=path, key=key)
    _recover(index)
    return index


def _recover(index: _Index) -> None:
    """Add transcripts the index does not know (lost index, crash before it was written)."""
    try:
        names = os.listdir(index.dir)
    except FileNotFoundError:
        return
    known = {e["sessionId"]: e for e in index.entries.values()}
    found = 0
    for name in names:
        sid, ext = os.path.splitext(name)
        if ext != ".jsonl" or not _SESSION_ID.match(sid):
            continue
        path = os.path.join(index.dir, name)
        mtime_ms = int(os.stat(path).st_mtime * 1000)
        entry = known.get(sid)
        if entry is not None:
            # updatedAt is written lazily; the transcript's mtime is never older than it.
            entry["updatedAt"] = max(int(entry["updatedAt"]), mtime_ms)
            continue
        key = _header_key(path)
        if key is None or key in index.entries:
            continue
        index.entries[key] = {"sessionId": sid, "updatedAt": mtime_ms}
        found += 1
    if found:
        index.dirty = True
        log.warn(
            "session index {dir}: recovered {n} session(s) from their transcripts",
            dir=index.dir,
            n=found,
        )


def _header_key(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    if isinstance(first, dict) and first.get("type") == "session":
        key = first.get("sessionKey")
        return key if isinstance(key, str) else None
    return None


def _merge(index: _Index, disk: _Index) -> None:
    """Take sessions another process added; ours win where both know a key."""
    for key, entry in disk.entries.items():
        if key not in index.entries:
            index.entries[key] = entry
    index.seen = disk.seen


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


def _append(path: str, data: bytes) -> None:
    new = not os.path.exists(path)
    if new:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        _fsync_dir(os.path.dirname(path))


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
