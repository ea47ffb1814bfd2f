"""``--workers 2``: real processes on one port, a killed worker restarted, SIGTERM drains them
all, and one session's turns serialised across the workers."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.testing import FakeUpstream, Received, Reply

from .support import GatewayProcess, child_env, http_client, spawn

TOKEN = "workers-test-token"
AUTH = {"Authorization": [f"Bearer {TOKEN}"], "Content-Type": ["application/json"]}


def config(state: str, upstream: FakeUpstream | None = None) -> None:
    data: dict[str, Any] = {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
        }
    }
    if upstream is not None:
        data["agents"] = {"defaults": {"model": "fake/m"}}
        data["models"] = {"providers": {"fake": upstream.provider_config()}}
    with open(os.path.join(state, "openclaw.json"), "w") as f:
        json.dump(data, f)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTests(TestCase):
    timeout = 120

    def state(self) -> str:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        return state

    async def start(self, state: str, *options: str) -> tuple[GatewayProcess, str, list[int]]:
        args = ["-m", "openclaw_twisted.cli", "gateway", "--port", "0", "--workers", "2"]
        proc = spawn(self, [*args, *options], child_env(state))
        line = (await proc.line_with(b"listening on http://")).decode()
        url = re.search(r"http://[0-9.]+:\d+", line).group(0)  # type: ignore[union-attr]
        for n in (1, 2):
            await proc.line_with(f"worker {n} started".encode())
        pids = [
            int(re.search(rb"worker %d started \(pid (\d+)\)" % n, proc.out).group(1))  # type: ignore[union-attr]
            for n in (1, 2)
        ]
        return proc, url, pids

    async def chat(self, url: str, body: dict[str, Any], **headers: str) -> Any:
        http = http_client(self)
        all_headers = {**AUTH, **{k: [v] for k, v in headers.items()}}
        response = await http.post(
            url + "/v1/chat/completions", json.dumps(body).encode(), headers=all_headers
        )
        return response.code, await response.json()

    async def test_both_workers_serve_one_port_and_a_killed_one_is_restarted(self) -> None:
        state = self.state()
        config(state)
        proc, url, pids = await self.start(state)
        self.assertEqual(proc.out.count(b"listening on http://"), 1)
        body = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}
        # Each run's log line names its worker: ask until both have answered.
        for _ in range(200):
            code, got = await self.chat(url, body)
            self.assertEqual(code, 200, got)
            if all(f"#info worker {n}] run ".encode() in proc.out for n in (1, 2)):
                break
        else:
            self.fail(f"one worker served everything: {proc.out.decode()}")

        os.kill(pids[0], signal.SIGKILL)
        await proc.line_with(b"was killed by SIGKILL; restarting it in")
        line = await proc.line_with(b"worker 1 restarted (pid")
        self.assertNotIn(str(pids[0]).encode(), line)
        # The port kept answering all along (worker 2, then both).
        for _ in range(5):
            code, got = await self.chat(url, body)
            self.assertEqual(code, 200, got)

        proc.terminate()
        self.assertEqual(await proc.ended, 0, proc.out)
        self.assertFalse([p for p in pids[1:] if alive(p)])

    async def test_sigterm_drains_every_worker_and_open_streams_end_properly(self) -> None:
        upstream = await FakeUpstream.start(reactor)
        self.addCleanup(upstream.stop)
        upstream.script(*[Reply(deltas=["one", " two"], stall_after=1)] * 2)
        state = self.state()
        config(state, upstream)
        proc, url, pids = await self.start(state, "--grace", "0.5")
        http = http_client(self)
        body = {
            "model": "openclaw",
            "stream": True,
            "messages": [{"role": "user", "content": "count"}],
        }
        responses = [
            await http.post(url + "/v1/chat/completions", json.dumps(body).encode(), headers=AUTH)
            for _ in range(2)
        ]
        for r in responses:
            self.assertEqual(r.code, 200)
        await upstream.request(1)
        texts: list[Deferred[bytes]] = [r.content() for r in responses]
        proc.terminate()
        for d in texts:
            text = (await d).decode()
            self.assertIn('"error"', text)
            self.assertIn("shutting down", text)
            self.assertTrue(text.rstrip().endswith("data: [DONE]"), text)
        self.assertEqual(await proc.ended, 0, proc.out)
        self.assertIn(b"worker 1 (pid", proc.out)
        self.assertFalse([p for p in pids if alive(p)])

    async def test_turns_on_one_session_are_serialised_across_workers(self) -> None:
        upstream = await FakeUpstream.start(reactor)
        self.addCleanup(upstream.stop)

        def answer(request: Received) -> Reply:
            # The answer names how many user turns the model was sent (history included).
            users = [m for m in json.loads(request.body)["messages"] if m["role"] == "user"]
            return Reply(deltas=[f"seen {len(users)}"], delay=0.02)

        upstream.script(*[answer] * 20)
        state = self.state()
        config(state, upstream)
        proc, url, _ = await self.start(state)
        body = {"model": "openclaw", "messages": [{"role": "user", "content": "turn"}]}
        results = await DeferredList(
            [
                Deferred.fromCoroutine(self.chat(url, body, **{"x-openclaw-session-key": "one"}))
                for _ in range(20)
            ],
            fireOnOneErrback=True,
        )
        for _, (code, got) in results:
            self.assertEqual(code, 200, got)
        self.assertTrue(
            all(f"#info worker {n}] run ".encode() in proc.out for n in (1, 2)),
            "both workers ran turns of the session",
        )
        # Every turn saw every turn before it, whichever worker ran it: 20 whole pairs.
        records = self.successResultOf(DiskSessionStore(state).transcript("main", "one"))
        self.assertEqual([r["role"] for r in records], ["user", "assistant"] * 20)
        self.assertEqual([r["text"] for r in records[1::2]], [f"seen {n}" for n in range(1, 21)])
        sessions = self.successResultOf(DiskSessionStore(state).sessions("main"))
        self.assertEqual([s["key"] for s in sessions], ["one"])
