"""Chat completions over real sockets: slow readers, disconnects, early refusals, curl."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from typing import Any, overload

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from openclaw_twisted import Gateway, load_config
from openclaw_twisted.agents.events import RunEvent
from openclaw_twisted.agents.runner import Run
from openclaw_twisted.testing import Script, ScriptedProvider, parse_sse

from ..support import REPO, listen
from .memory import TOKEN, gateway_config, make_gateway, parse_response


class Repeated(Sequence[str]):
    """``n`` times the same delta, without building the whole answer up front."""

    def __init__(self, piece: str, n: int) -> None:
        self.piece, self.n = piece, n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self.piece] * len(range(*i.indices(self.n)))
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.piece

    def __iter__(self) -> Iterator[str]:
        return (self.piece for _ in range(self.n))


def request_bytes(body: dict[str, Any], token: str = TOKEN) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data)
    ) + data


class RawClient(Protocol):
    """A hand-driven HTTP client: what it sent, what it read, and when it was closed."""

    def __init__(self, request: bytes, read_step: int | None = None) -> None:
        self.request = request
        self.received = bytearray()
        self.read_step = read_step
        self._next_pause = read_step or 0
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.first: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.first.called:
            self.first.callback(None)
        if self.read_step and len(self.received) >= self._next_pause:
            # A slow reader: stop reading for a moment after every read_step bytes.
            self._next_pause += self.read_step
            self.transport.pauseProducing()  # type: ignore[union-attr]
            reactor.callLater(0.001, self.transport.resumeProducing)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.reason = reason
        self.lost.callback(None)


async def until(check: Any, interval: float = 0.01, limit: float = 10.0) -> None:
    """Wait (without blocking the reactor) until ``check()`` is true; fail after ``limit``."""
    waited = 0.0
    while not check():
        if waited >= limit:
            raise AssertionError(f"condition not reached in {limit}s")
        await deferLater(reactor, interval, lambda: None)
        waited += interval


class LoopbackTests(TestCase):
    async def serve(self, script: Script, data: dict[str, Any] | None = None) -> int:
        self.provider = ScriptedProvider(script, clock=reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, data, reactor=reactor)
        site = self.gateway.site()
        self.channels: list[Any] = []
        build = site.buildProtocol

        def tracked(addr: Any) -> Any:
            channel = build(addr)
            self.channels.append(channel)
            return channel

        site.buildProtocol = tracked  # type: ignore[method-assign]
        url = await listen(self, self.gateway, site)
        return int(url.rsplit(":", 1)[1])

    async def connect(self, port: int, client: RawClient) -> RawClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.lost if client.transport.connected else None)  # type: ignore[union-attr]
        self.addCleanup(client.transport.abortConnection)  # type: ignore[union-attr]
        return client

    async def test_slow_reader_of_a_20mb_answer_keeps_gateway_buffers_small(self) -> None:
        piece, count = "x" * 131_072, 160  # 20 MiB of answer
        port = await self.serve(Script(deltas=Repeated(piece, count)))
        most = {"transport": 0, "queued": 0}

        def sample(run: Run, event: RunEvent) -> None:
            most["queued"] = max(most["queued"], len(run._events) * len(piece))

        self.gateway.runner.listeners.append(sample)
        client = RawClient(
            request_bytes({"stream": True, "messages": [{"role": "user", "content": "big"}]})
        )
        await self.connect(port, client)
        await until(lambda: bool(self.channels))
        t = self.channels[0].transport
        write_sequence = t.writeSequence

        def measured(data: Any) -> None:
            # What the gateway holds for this client after each write (the socket's own
            # kernel buffer is not gateway memory).
            write_sequence(data)
            pending = len(t.dataBuffer) - t.offset + t._tempDataLen
            most["transport"] = max(most["transport"], pending)

        t.writeSequence = measured
        client.transport.pauseProducing()  # type: ignore[union-attr]
        await until(lambda: bool(self.provider.streams))
        stream = self.provider.streams[0]
        # The client reads nothing: the gateway stops pulling once the socket is full.
        last = [-1]

        def stalled() -> bool:
            settled = stream.sent == last[0]
            last[0] = stream.sent
            return settled

        await until(stalled, interval=0.1)
        paused_at = stream.sent
        self.assertLess(paused_at, count // 2)
        client.read_step = 262_144
        client._next_pause = len(client.received) + client.read_step
        client.transport.resumeProducing()  # type: ignore[union-attr]
        await client.lost
        response = parse_response(bytes(client.received))
        assert response is not None
        self.assertTrue(response.complete)
        events = parse_sse(response.body)
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
        self.assertEqual(len(content), len(piece) * count)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(stream.sent, count)
        buffered = most["transport"] + most["queued"]
        self.assertLess(buffered, 4 * 1024 * 1024, most)
        # Reported by the test run for the record (see the report).
        print(
            f"\n  20 MiB answer: provider paused after {paused_at}/{count} deltas; "
            f"most bytes buffered in the gateway {most}"
        )

    async def test_client_disconnect_closes_the_provider_stream(self) -> None:
        for stream_mode in (True, False):
            port = await self.serve(Script(hang=True))
            ended: Deferred[tuple[Run, RunEvent]] = Deferred()

            def on_event(
                run: Run, event: RunEvent, ended: Deferred[tuple[Run, RunEvent]] = ended
            ) -> None:
                if event.phase == "error" and not ended.called:
                    ended.callback((run, event))

            self.gateway.runner.listeners.append(on_event)
            body = {"stream": stream_mode, "messages": [{"role": "user", "content": "hi"}]}
            client = await self.connect(port, RawClient(request_bytes(body)))
            await until(lambda: bool(self.provider.streams))
            if stream_mode:
                await client.first  # the headers and the role chunk are out
            client.transport.loseConnection()  # type: ignore[union-attr]
            run, event = await ended
            self.assertEqual(event.data["error"]["kind"], "aborted")
            self.assertTrue(self.provider.streams[0].cancelled)
            await run.wait()
            self.assertEqual(self.gateway.runner.active, {})

    async def test_oversized_body_is_refused_and_the_client_reads_the_answer(self) -> None:
        port = await self.serve(Script(), gateway_config("x", maxBodyBytes=1024))
        body = {"messages": [{"role": "user", "content": "x" * 500_000}]}
        client = await self.connect(port, RawClient(request_bytes(body)))
        await client.lost
        response = parse_response(bytes(client.received))
        assert response is not None
        self.assertEqual(response.status, 413)
        self.assertEqual(response.json()["error"]["message"], "Payload too large")
        self.assertEqual(self.provider.requests, [])


class ReadmeTests(TestCase):
    """The README's curl examples, verbatim but for the port, against the example config."""

    async def test_readme_curl_examples(self) -> None:
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        section = readme.split("## OpenAI-compatible chat completions", 1)[1].split("\n## ", 1)[0]
        commands = re.findall(r"```bash\n(curl .*?)```", section, re.S)
        self.assertEqual(len(commands), 2)
        config = load_config(
            os.path.join(REPO, "examples", "openclaw.json5"), {"OPENCLAW_STATE_DIR": self.mktemp()}
        )
        gateway = Gateway(config, reactor)
        url = await listen(self, gateway)
        port = url.rsplit(":", 1)[1]
        outputs = []
        for command in commands:
            self.assertIn("http://127.0.0.1:18789/v1/chat/completions", command)
            out = await run_shell(command.replace("127.0.0.1:18789", f"127.0.0.1:{port}"))
            outputs.append(out)
        answer = json.loads(outputs[0])
        self.assertEqual(answer["choices"][0]["message"]["content"], "hi")
        events = parse_sse(outputs[1])
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[1]["choices"][0]["delta"], {"content": "hi"})


async def run_shell(command: str) -> bytes:
    """Run ``command`` with /bin/sh without blocking the reactor; its stdout."""
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        "/bin/sh", ["-c", command], env=dict(os.environ)
    )
    if code != 0:
        raise AssertionError(f"{command!r} exited {code}: {err!r}")
    return out
