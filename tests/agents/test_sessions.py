"""The disk session store: layout, durability, torn lines, path safety, recovery."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.sessions import INDEX_LOG, INDEX_REFRESH_SECONDS, DiskSessionStore
from openclaw_twisted.agents.store import messages_from
from openclaw_twisted.providers.interface import Message


def turn(user: str, answer: str, ts: int = 1) -> list[dict[str, Any]]:
    return [
        {"type": "message", "role": "user", "text": user, "ts": ts},
        {"type": "message", "role": "assistant", "text": answer, "ts": ts, "stopReason": "stop"},
    ]


def files_under(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names
    )


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class LayoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        self.time = FakeTime()
        self.store = DiskSessionStore(self.state, now=self.time)
        self.dir = os.path.join(self.state, "agents", "main", "sessions")

    def index(self) -> dict[str, Any]:
        """The index on disk: sessions.json, then the changes logged since it was written."""
        with open(os.path.join(self.dir, "sessions.json")) as f:
            data: dict[str, Any] = json.load(f)
        if os.path.exists(os.path.join(self.dir, INDEX_LOG)):
            with open(os.path.join(self.dir, INDEX_LOG)) as f:
                for line in f:
                    change = json.loads(line)
                    data[change["key"]] = change["entry"]
        return data

    def test_index_and_transcript(self) -> None:
        """sessions.json maps the key to a uuid4 and updatedAt; <uuid>.jsonl holds the turn."""
        self.store.append("main", "agent:main:main", turn("hi", "hello"))
        entry = self.index()["agent:main:main"]
        self.assertEqual(uuid.UUID(entry["sessionId"]).version, 4)
        self.assertEqual(entry["updatedAt"], 1_700_000_000_000)
        self.assertEqual(
            sorted(os.listdir(self.dir)), sorted(["sessions.json", entry["sessionId"] + ".jsonl"])
        )
        with open(os.path.join(self.dir, entry["sessionId"] + ".jsonl")) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(lines[0]["type"], "session")
        self.assertEqual(lines[0]["sessionKey"], "agent:main:main")
        self.assertEqual(lines[1:], turn("hi", "hello"))
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)

    def test_reload_from_disk(self) -> None:
        """A new store (a restarted process) sees the same transcript and history."""
        self.store.append("main", "k", turn("one", "1"))
        self.store.append("main", "k", turn("two", "2"))
        again = DiskSessionStore(self.state)
        self.assertEqual(
            self.successResultOf(again.transcript("main", "k")), turn("one", "1") + turn("two", "2")
        )
        self.assertEqual(
            self.successResultOf(again.history("main", "k", 3)),
            [Message("assistant", "1"), Message("user", "two"), Message("assistant", "2")],
        )
        self.assertEqual([r["key"] for r in self.successResultOf(again.sessions("main"))], ["k"])

    def test_unknown_session(self) -> None:
        self.assertEqual(self.successResultOf(self.store.history("main", "nope", 10)), [])
        self.assertEqual(self.successResultOf(self.store.transcript("main", "nope")), [])
        self.assertEqual(self.successResultOf(self.store.sessions("main")), [])
        self.assertFalse(os.path.exists(self.state), "reading creates nothing")

    def test_history_limit(self) -> None:
        for i in range(5):
            self.store.append("main", "k", turn(f"u{i}", f"a{i}"))
        self.assertEqual(
            [m.text for m in self.successResultOf(self.store.history("main", "k", 3))],
            ["a3", "u4", "a4"],
        )
        self.assertEqual(self.successResultOf(self.store.history("main", "k", 0)), [])
        self.assertEqual(len(self.successResultOf(self.store.history("main", "k", 100))), 10)

    def test_sessions_newest_first(self) -> None:
        self.store.append("main", "old", turn("a", "b"))
        self.time.now += 5
        self.store.append("main", "new", turn("a", "b"))
        self.assertEqual(
            [r["key"] for r in self.successResultOf(self.store.sessions("main"))], ["new", "old"]
        )

    def test_updated_at_written_at_most_once_a_second(self) -> None:
        """Refreshing updatedAt is coalesced; flush() writes it; a reload never goes back."""
        self.store.append("main", "k", turn("a", "b"))
        first = self.index()["k"]["updatedAt"]
        self.time.now += INDEX_REFRESH_SECONDS / 2
        self.store.append("main", "k", turn("c", "d"))
        self.assertEqual(self.index()["k"]["updatedAt"], first)
        self.assertEqual(
            self.successResultOf(self.store.sessions("main"))[0]["updatedAt"], first + 500
        )
        # A crash now loses only the index refresh; the transcript's mtime restores it.
        self.assertGreaterEqual(
            self.successResultOf(DiskSessionStore(self.state).sessions("main"))[0]["updatedAt"],
            int(os.stat(self.dir).st_mtime) * 1000 - 1000,
        )
        self.store.flush()
        self.assertEqual(self.index()["k"]["updatedAt"], first + 500)
        self.time.now += INDEX_REFRESH_SECONDS
        self.store.append("main", "k", turn("e", "f"))
        self.assertEqual(self.index()["k"]["updatedAt"], first + 500 + 1000)


class TornLineTests(SynchronousTestCase):
    def test_torn_last_line_skipped_and_next_append_is_clean(self) -> None:
        state = self.mktemp()
        store = DiskSessionStore(state)
        store.append("main", "k", turn("one", "1"))
        sid = self.successResultOf(store.sessions("main"))[0]["sessionId"]
        path = os.path.join(state, "agents", "main", "sessions", sid + ".jsonl")
        record = json.dumps(turn("two", "2")[0])
        with open(path, "a") as f:
            f.write(record[: len(record) // 2])  # the crash came mid-write

        again = DiskSessionStore(state)
        self.assertEqual(self.successResultOf(again.transcript("main", "k")), turn("one", "1"))
        again.append("main", "k", turn("three", "3"))
        self.assertEqual(
            self.successResultOf(again.transcript("main", "k")),
            turn("one", "1") + turn("three", "3"),
        )
        # Read back from disk by a third process: the fragment stayed its own (skipped) line.
        self.assertEqual(
            self.successResultOf(DiskSessionStore(state).transcript("main", "k")),
            turn("one", "1") + turn("three", "3"),
        )
        with open(path) as f:
            lines = f.read().split("\n")
        self.assertEqual(lines[3], record[: len(record) // 2])
        self.assertEqual(lines[-1], "")

    def test_garbage_lines_skipped(self) -> None:
        state = self.mktemp()
        store = DiskSessionStore(state)
        store.append("main", "k", turn("one", "1"))
        sid = self.successResultOf(store.sessions("main"))[0]["sessionId"]
        path = os.path.join(state, "agents", "main", "sessions", sid + ".jsonl")
        with open(path, "a") as f:
            f.write("not json\n[1,2]\n\n")
        self.assertEqual(
            self.successResultOf(DiskSessionStore(state).history("main", "k", 10))[-1].text, "1"
        )


class PathSafetyTests(SynchronousTestCase):
    def test_agent_id_never_escapes(self) -> None:
        """``../../etc`` is normalised to ``etc``; nothing is written outside the state dir."""
        outer = os.path.abspath(self.mktemp())
        state = os.path.join(outer, "a", "b", "state")
        store = DiskSessionStore(state)
        for agent in ("../../etc", "..", "/abs/path", "a/../../../x", "\x00evil"):
            store.append(agent, "k", turn("hi", "there"))
            self.assertEqual(
                self.successResultOf(store.transcript(agent, "k")), turn("hi", "there")
            )
        for path in files_under(outer):
            self.assertTrue(path.startswith(os.path.join("a", "b", "state", "agents")), path)
        self.assertEqual(
            sorted(os.listdir(os.path.join(state, "agents"))),
            ["a-x", "abs-path", "etc", "evil", "main"],
        )

    def test_keys_never_become_file_names(self) -> None:
        state = self.mktemp()
        store = DiskSessionStore(state)
        keys = ["../../../../tmp/evil", "/etc/passwd", "agent:main:x/../y", "CON", "a" * 5000]
        for key in keys:
            store.append("main", key, turn("hi", key[:20]))
        names = os.listdir(os.path.join(state, "agents", "main", "sessions"))
        self.assertEqual(len(names), len(keys) + 2)
        for name in names:
            if name not in ("sessions.json", INDEX_LOG):
                uuid.UUID(name.removesuffix(".jsonl"))
        self.assertEqual(
            sorted(
                r["key"] for r in self.successResultOf(DiskSessionStore(state).sessions("main"))
            ),
            sorted(keys),
        )

    def test_bad_session_id_in_index_is_not_a_path(self) -> None:
        state = self.mktemp()
        d = os.path.join(state, "agents", "main", "sessions")
        os.makedirs(d)
        with open(os.path.join(d, "sessions.json"), "w") as f:
            json.dump({"k": {"sessionId": "../../../secret", "updatedAt": 1}, "j": "junk"}, f)
        store = DiskSessionStore(state)
        self.assertEqual(self.successResultOf(store.transcript("main", "k")), [])
        store.append("main", "k", turn("hi", "there"))
        sid = self.successResultOf(store.sessions("main"))[0]["sessionId"]
        uuid.UUID(sid)
        self.assertEqual(
            files_under(state),
            sorted(
                [
                    os.path.join("agents", "main", "sessions", "sessions.json"),
                    os.path.join("agents", "main", "sessions", sid + ".jsonl"),
                    # Beside sessions/, for processes sharing the state dir (--workers).
                    os.path.join("agents", "main", "locks", "sessions.json.lock"),
                ]
            ),
        )


class RecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        store = DiskSessionStore(self.state)
        store.append("main", "k1", turn("one", "1"))
        store.append("main", "k2", turn("two", "2"))
        self.dir = os.path.join(self.state, "agents", "main", "sessions")
        self.index = os.path.join(self.dir, "sessions.json")

    def test_corrupt_index_rebuilt_from_transcripts(self) -> None:
        """A corrupt sessions.json is set aside and logged; no transcript is lost."""
        with open(self.index, "w") as f:
            f.write('{"k1": {"sessionId": ')
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        store = DiskSessionStore(self.state)
        self.assertEqual(self.successResultOf(store.transcript("main", "k1")), turn("one", "1"))
        self.assertEqual(self.successResultOf(store.transcript("main", "k2")), turn("two", "2"))
        self.assertIn(
            "is unreadable",
            " ".join(e["log_format"] for e in logged if e["log_level"] == LogLevel.error),
        )
        aside = [n for n in os.listdir(self.dir) if n.startswith("sessions.json.corrupt-")]
        self.assertEqual(len(aside), 1)
        store.append("main", "k1", turn("three", "3"))
        with open(self.index) as f:
            self.assertEqual(sorted(json.load(f)), ["k1", "k2"])

    def test_index_not_an_object(self) -> None:
        with open(self.index, "w") as f:
            f.write("[]")
        self.assertEqual(
            sorted(
                r["key"]
                for r in self.successResultOf(DiskSessionStore(self.state).sessions("main"))
            ),
            ["k1", "k2"],
        )

    def test_lost_index_recovered(self) -> None:
        os.remove(self.index)
        store = DiskSessionStore(self.state)
        self.assertEqual(self.successResultOf(store.history("main", "k2", 10))[-1].text, "2")
        store.flush()
        self.assertTrue(os.path.exists(self.index))

    def test_two_processes_share_the_directory(self) -> None:
        """Another store (the gateway and ``agent --local``) adds sessions and turns."""
        a = DiskSessionStore(self.state)
        b = DiskSessionStore(self.state)
        self.assertEqual(len(self.successResultOf(a.transcript("main", "k1"))), 2)
        b.append("main", "k1", turn("from b", "b"))
        b.append("main", "k3", turn("new in b", "b"))
        self.assertEqual(self.successResultOf(a.transcript("main", "k1"))[-2:], turn("from b", "b"))
        a.append("main", "k4", turn("new in a", "a"))
        c = DiskSessionStore(self.state)
        self.assertEqual(
            sorted(r["key"] for r in self.successResultOf(c.sessions("main"))),
            ["k1", "k2", "k3", "k4"],
        )
        self.assertEqual(len(self.successResultOf(c.transcript("main", "k1"))), 4)


class OpenClawTranscriptTests(SynchronousTestCase):
    def test_openclaw_records_become_history(self) -> None:
        """Transcripts OpenClaw itself wrote (message.content parts) still give history."""
        records = [
            {"type": "session", "id": "x"},
            {
                "type": "message",
                "message": {"role": "user", "content": [{"type": "text", "text": "q"}]},
            },
            {"type": "message", "message": {"role": "assistant", "content": "a"}},
            {"type": "message", "message": {"role": "toolResult", "content": "t"}},
        ]
        self.assertEqual(
            messages_from(records, 10), [Message("user", "q"), Message("assistant", "a")]
        )


class DeletedTranscriptTests(SynchronousTestCase):
    def test_deleted_transcript_starts_again_with_a_header(self) -> None:
        state = self.mktemp()
        store = DiskSessionStore(state)
        store.append("main", "k", turn("one", "1"))
        d = os.path.join(state, "agents", "main", "sessions")
        sid = self.successResultOf(store.sessions("main"))[0]["sessionId"]
        os.remove(os.path.join(d, sid + ".jsonl"))
        self.assertEqual(self.successResultOf(store.transcript("main", "k")), [])
        store.append("main", "k", turn("two", "2"))
        os.remove(os.path.join(d, "sessions.json"))
        self.assertEqual(
            self.successResultOf(DiskSessionStore(state).transcript("main", "k")), turn("two", "2")
        )


class CacheTests(SynchronousTestCase):
    def test_memory_is_bounded_and_answers_stay_whole(self) -> None:
        """Past the caps, older records are dropped from memory and read from disk on demand."""
        state = self.mktemp()
        store = DiskSessionStore(state, cache_bytes=4000, cache_bytes_per_session=1500)
        for i in range(30):
            for key in ("a", "b", "c"):
                store.append("main", key, turn(f"{key}{i}", "x" * 50))
        self.assertLessEqual(store._cached_bytes, 4000)
        for t in store._cache.values():
            self.assertLessEqual(t.held, 1500)
        for key in ("a", "b", "c"):
            self.assertEqual(len(self.successResultOf(store.transcript("main", key))), 60)
            history = self.successResultOf(store.history("main", key, 45))
            self.assertEqual(len(history), 45)
            self.assertEqual(history[-2].text, f"{key}29")
            self.assertEqual(history[1].text, f"{key}8")
        self.assertEqual(self.successResultOf(store.history("main", "a", 2))[0].text, "a29")


class TextTests(SynchronousTestCase):
    def test_any_text_round_trips(self) -> None:
        """Non-ASCII is written as UTF-8; a lone surrogate (valid JSON input) is escaped."""
        state = self.mktemp()
        store = DiskSessionStore(state)
        keys = ["agent:main:openai-user:zoë", "agent:main:\ud800"]
        for key in keys:
            store.append("main", key, turn("héllo \ud83d", "日本 \udfff"))
        again = DiskSessionStore(state)
        for key in keys:
            self.assertEqual(
                self.successResultOf(again.transcript("main", key)),
                turn("héllo \ud83d", "日本 \udfff"),
            )
        store.append("main", "plain", turn("héllo", "日本"))
        sid = next(
            r["sessionId"]
            for r in self.successResultOf(store.sessions("main"))
            if r["key"] == "plain"
        )
        with open(os.path.join(state, "agents", "main", "sessions", sid + ".jsonl"), "rb") as f:
            self.assertIn("日本".encode(), f.read())
