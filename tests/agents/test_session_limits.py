"""Session data a client controls stays cheap: key caps, index cost, tail reads, parsing."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted.agents import sessions
from openclaw_twisted.agents.sessions import INDEX, INDEX_LOG, DiskSessionStore
from openclaw_twisted.agents.store import SESSION_KEY_MAX_CHARS, USER_MAX_CHARS
from openclaw_twisted.cli import agent_local

from ..support import http_client
from ..test_cli import options
from ..ws.helpers import TOKEN, make_gateway, open_session, serve
from .test_group_commit import FakeThreads
from .test_sessions import turn

CHAT = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}
CONFIG = {
    "gateway": {
        "auth": {"token": TOKEN},
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    }
}


class EdgeCapTests(TestCase):
    """Over the cap, each edge refuses at once with a message naming the field."""

    timeout = 10

    async def post(self, url: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
        r = await http_client(self).post(
            url + "/v1/chat/completions",
            json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                **headers,
            },
        )
        return r.code, json.loads(await r.content())

    async def test_http_user_and_session_key_header(self) -> None:
        gateway = make_gateway(self, CONFIG)
        url = await serve(self, gateway)
        code, body = await self.post(url, {**CHAT, "user": "u" * (USER_MAX_CHARS + 1)})
        self.assertEqual(code, 400, body)
        self.assertEqual(body["error"]["param"], "user")
        self.assertEqual(body["error"]["code"], "too_long")
        self.assertIn(f"the limit is {USER_MAX_CHARS}", body["error"]["message"])
        code, body = await self.post(
            url, CHAT, **{"X-OpenClaw-Session-Key": "k" * (SESSION_KEY_MAX_CHARS + 1)}
        )
        self.assertEqual(code, 400, body)
        self.assertEqual(body["error"]["param"], "x-openclaw-session-key")
        self.assertEqual(self.successResultOf(gateway.store.sessions("main")), [])
        # At the limits, the turn runs and is kept under that session.
        code, body = await self.post(url, {**CHAT, "user": "u" * USER_MAX_CHARS})
        self.assertEqual(code, 200, body)
        code, body = await self.post(
            url, CHAT, **{"X-OpenClaw-Session-Key": "k" * SESSION_KEY_MAX_CHARS}
        )
        self.assertEqual(code, 200, body)
        await gateway.store.flush()
        self.assertEqual(len(await gateway.store.sessions("main")), 2)

    async def test_ws_session_key_param(self) -> None:
        gateway = make_gateway(self)
        s = await open_session(self, await serve(self, gateway))
        for method in ("chat.send", "chat.history", "agent"):
            frame = await s.call(
                method, {"sessionKey": "k" * (SESSION_KEY_MAX_CHARS + 1), "message": "hi"}
            )
            self.assertFalse(frame["ok"], method)
            self.assertEqual(frame["error"]["code"], "INVALID_REQUEST")
            self.assertIn("`sessionKey` is too long", frame["error"]["message"])

    async def test_cli_session_key_option(self) -> None:
        state = os.path.abspath(self.mktemp())
        out, err = io.StringIO(), io.StringIO()
        env = {"OPENCLAW_STATE_DIR": state, "HOME": state}
        argv = ("-m", "hi", "--session-key", "k" * (SESSION_KEY_MAX_CHARS + 1))
        code = await Deferred.fromCoroutine(agent_local(reactor, options(*argv), out, err, env))
        self.assertEqual(code, 2)
        self.assertIn("`--session-key` is too long", err.getvalue())
        self.assertFalse(os.path.exists(os.path.join(state, "agents")))


def no_fsync(test: SynchronousTestCase) -> None:
    test.patch(sessions.os, "fsync", lambda fd: None)


class IndexCostTests(SynchronousTestCase):
    def written(self) -> Callable[[], dict[str, int]]:
        """Count the bytes each file name is written (through the store's one write path)."""
        counts: dict[str, int] = {}
        real = sessions._write_all

        def counting(fd: int, data: bytes) -> None:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            counts[name] = counts.get(name, 0) + len(data)
            real(fd, data)

        self.patch(sessions, "_write_all", counting)
        return lambda: counts

    def index_bytes(self, counts: dict[str, int]) -> int:
        return sum(n for name, n in counts.items() if not name.endswith(".jsonl"))

    def test_a_new_session_costs_the_same_at_2000_sessions_as_at_200(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc to name the file a write goes to")
        no_fsync(self)
        state = self.mktemp()
        store = DiskSessionStore(state)
        counts = self.written()
        per: dict[int, float] = {}
        for n in range(2100):
            if n in (100, 2000):
                before = self.index_bytes(counts())
            store.append("main", f"agent:main:openai-user:user-{n:05d}", turn("q", "a"))
            if n in (199, 2099):
                per[n + 1] = (self.index_bytes(counts()) - before) / 100
        # The same (amortised) bytes for the 2000th new session as for the 200th: the index
        # is not rewritten whole for each one (that was ~220 KB each at 2000 sessions).
        self.assertLess(per[2100], 2 * per[200], per)
        self.assertLess(per[2100], 1000, per)
        # Nothing is lost on the way: a restarted store sees every session, and after a
        # flush sessions.json alone (what OpenClaw reads) holds them all.
        self.assertEqual(len(self.successResultOf(DiskSessionStore(state).sessions("main"))), 2100)
        self.successResultOf(store.flush())
        d = os.path.join(state, "agents", "main", "sessions")
        self.assertFalse(os.path.exists(os.path.join(d, INDEX_LOG)))
        with open(os.path.join(d, INDEX)) as f:
            self.assertEqual(len(json.load(f)), 2100)

    def test_the_log_replays_after_a_crash_and_a_torn_line_is_skipped(self) -> None:
        state = self.mktemp()
        store = DiskSessionStore(state)
        for n in range(6):
            store.append("main", f"k{n}", turn("q", str(n)))
        d = os.path.join(state, "agents", "main", "sessions")
        self.assertTrue(os.path.exists(os.path.join(d, INDEX_LOG)))
        with open(os.path.join(d, INDEX_LOG), "a") as f:
            f.write('{"key": "torn", "entry": {"sessionId": "ab')  # killed mid-write
        again = DiskSessionStore(state)
        keys = sorted(r["key"] for r in self.successResultOf(again.sessions("main")))
        self.assertEqual(keys, [f"k{n}" for n in range(6)])
        self.assertEqual(self.successResultOf(again.history("main", "k5", 1))[0].text, "5")


class TailReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        store = DiskSessionStore(self.state)
        store.append("main", "k", turn("first", "1"))
        sid = self.successResultOf(store.sessions("main"))[0]["sessionId"]
        self.path = os.path.join(self.state, "agents", "main", "sessions", sid + ".jsonl")
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def warnings(self) -> list[str]:
        return [e["log_format"] for e in self.logged if e["log_level"] == LogLevel.warn]

    def test_history_never_parses_what_lies_before_it(self) -> None:
        """A transcript far larger than the history: only its end is read and parsed."""
        with open(self.path, "a") as f:
            # 4 MB of lines that are not records: parsing any of them logs a warning.
            f.write(("garbage " * 128 + "\n") * 4096)
            for i in range(20):
                f.write("".join(json.dumps(r) + "\n" for r in turn(f"u{i}", f"a{i}")))
        store = DiskSessionStore(self.state)
        history = self.successResultOf(store.history("main", "k", 6))
        self.assertEqual([m.text for m in history][-2:], ["u19", "a19"])
        self.assertEqual(len(history), 6)
        self.assertEqual(self.warnings(), [])
        # The whole transcript (chat.history) does read it all, and says what it skipped.
        records = self.successResultOf(store.transcript("main", "k"))
        self.assertEqual(len(records), 2 + 40)
        self.assertIn("transcript {path}: skipped {n} unreadable line(s)", self.warnings())

    def test_any_block_size_reads_the_same_records(self) -> None:
        """Lines cut across blocks, a torn last line, blank lines: as a forward read sees them."""
        with open(self.path, "a") as f:
            for i in range(30):
                f.write("".join(json.dumps(r) + "\n" for r in turn(f"u{i}" * i, f"a{i}")))
                if i % 7 == 0:
                    f.write("\n")
            f.write('{"type": "message", "role": "user", "te')
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")[:-1]
        every = [json.loads(raw) for raw in lines if raw.strip()]
        for block in (1, 7, 64, 1000, 1 << 20):
            self.patch(sessions, "_TAIL_BLOCK", block)
            read = sessions._read_tail(self.path, None)
            self.assertEqual([r for r, _ in read.records], every, block)
            self.assertFalse(read.trimmed)
            self.assertGreater(read.torn, 0)
            read = sessions._read_tail(self.path, 3)
            self.assertEqual([r["text"] for r, _ in read.records], ["a28", "u29" * 29, "a29"])
            self.assertTrue(read.trimmed)


class Recorded(FakeThreads):
    """Also records whether a job is running (as a pool thread would)."""

    inside = False

    def work(self, n: int = 1) -> None:
        self.inside = True
        try:
            super().work(n)
        finally:
            self.inside = False


class OffTheReactorTests(SynchronousTestCase):
    def test_nothing_over_a_few_kb_is_parsed_or_serialised_on_the_reactor(self) -> None:
        no_fsync(self)
        state = self.mktemp()
        setup = DiskSessionStore(state)
        for n in range(2000):
            setup.append("main", f"agent:main:openai-user:{n}", turn("q", "a"))
        for _ in range(20):
            setup.append("main", "big", turn("q" * 20_000, "a" * 20_000))
        self.successResultOf(setup.flush())

        threads = Recorded()
        on_reactor: list[tuple[str, int]] = []

        def watch(name: str, size: Callable[[Any, Any], int]) -> None:
            real = getattr(json, name)

            def watched(*args: Any, **kw: Any) -> Any:
                result = real(*args, **kw)
                n = size(args[0], result)
                if n > 4096 and not threads.inside:
                    on_reactor.append((name, n))
                return result

            self.patch(json, name, watched)

        watch("loads", lambda data, _: len(data))
        watch("dumps", lambda _, text: len(text))
        store = DiskSessionStore(state, reactor=threads)
        reads = [
            store.sessions("main"),
            store.history("main", "big", 30),
            store.transcript("main", "big"),
        ]
        appended = store.append("main", "big", turn("q" * 50_000, "a" * 50_000))
        created = store.append("main", "new", turn("q" * 50_000, "a"))
        threads.settle()
        flushed = store.flush()
        threads.settle()
        self.assertEqual(len(self.successResultOf(reads[0])), 2001)
        self.assertEqual(len(self.successResultOf(reads[1])), 30)
        self.assertEqual(len(self.successResultOf(reads[2])), 40)
        for d in (appended, created, flushed):
            self.successResultOf(d)
        self.assertEqual(on_reactor, [])
        again = DiskSessionStore(state)
        self.assertEqual(len(self.successResultOf(again.transcript("main", "big"))), 42)
        self.assertEqual(len(self.successResultOf(again.sessions("main"))), 2002)
