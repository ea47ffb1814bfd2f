"""
``python -m bench``: start a fake provider, the floor proxy and the gateway on 127.0.0.1, run the
scenarios of issue 6 against them in one run, and print the figures, their targets and ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import attrs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOKEN = "bench-token"
FAST = {"model": "openclaw", "messages": [{"role": "user", "content": "Say hello."}]}
KIB, MIB = 1024, 1024 * 1024


def _ratio(a: float, b: float) -> float:
    """``a / b``: a run that completed nothing (a starved machine) is a MISS, not a crash."""
    return a / b if b else (float("inf") if a else 0.0)


@attrs.frozen
class Mode:
    """How much load: the full run, ``--quick`` or ``--smoke`` (seconds, for the test suite)."""

    seconds: float  # each closed-loop measurement (wrk rounds up to whole seconds)
    warmup: float
    streams: int
    chunks: int
    ramp: float  # streams opened per second
    big_bytes: int
    read_rate: int  # the slow reader's bytes per second
    settle: float = 0.5  # seconds a fresh gateway idles before its RSS counts as "idle"


MODES = {
    "full": Mode(10, 2, 2000, 200, 500, 20_000_000, 1_000_000),
    "quick": Mode(5, 1, 200, 200, 200, 5_000_000, 1_000_000),
    "smoke": Mode(0.5, 0, 5, 5, 100, 200_000, 2_000_000, settle=0.1),
}


def raise_nofile() -> None:
    """In each child: as many open files as allowed (2,000 streams need 4,000+ sockets)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Proc:
    """A server child process that prints its port; RSS and CPU from ``/proc``."""

    def __init__(self, name: str, argv: list[str], out: Path, ready: str, env: dict[str, str]):
        self.name = name
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            preexec_fn=raise_nofile,
        )
        self.pid = self.popen.pid
        log = (out / f"{name}.log").open("wb")
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            log.write(line)
            m = re.search(ready.encode(), line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            log.close()
            raise SystemExit(f"bench: {name} did not start, see {out / (name + '.log')}")
        log.flush()
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(
            target=shutil.copyfileobj, args=(self.popen.stdout, log), daemon=True
        ).start()

    def status(self, key: str) -> int:
        """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) * KIB if m else 0

    def reset_peak(self) -> None:
        """Make VmHWM start again from the current RSS."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class Sampler:
    """The highest VmRSS of a process, sampled every 50 ms while a scenario runs."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.proc.reset_peak()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.status("VmHWM"))


@attrs.define
class Bench:
    mode: Mode
    out: Path
    wrk: str | None
    env: dict[str, str]
    provider: Proc | None = None
    rows: list[tuple[str, str, str, str, bool]] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    ready_times: list[float] = attrs.Factory(list)
    idle: list[int] = attrs.Factory(list)  # VmRSS of each fresh gateway once ready
    gateways: int = 0
    #: ``--workers N``: scenario 2 also against a gateway of N worker processes.
    workers: int = 1

    # -- processes ---------------------------------------------------------------------------

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def start_provider(self) -> Proc:
        m = self.mode
        argv = self.python("-m", "bench.provider", "--tick-chunks", str(m.chunks))
        argv += ["--big-bytes", str(m.big_bytes)]
        return Proc("provider", argv, self.out, r"listening (\d+)", self.env)

    def start_floor(self, provider: Proc) -> Proc:
        upstream = f"http://127.0.0.1:{provider.port}/v1"
        argv = self.python("-m", "bench.floor", "--upstream", upstream)
        return Proc("floor", argv, self.out, r"listening (\d+)", self.env)

    def start_gateway(
        self, provider: Proc, session: dict[str, Any] | None = None, workers: int = 1
    ) -> Proc:
        """``openclaw-twisted gateway --config <file> --port 0``, as a user starts it."""
        self.gateways += 1
        state = self.out / f"state-{self.gateways}"
        state.mkdir()
        config = {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "http": {
                    "endpoints": {
                        "chatCompletions": {"enabled": True},
                        "responses": {"enabled": True},
                    }
                },
                # Scenario 4 opens 2,000 streams from one address: past the default caps.
                "limits": {"maxRunsPerClient": 100_000, "maxUpstreamConnections": 100_000},
            },
            "models": {
                "providers": {
                    "bench": {
                        "baseUrl": f"http://127.0.0.1:{provider.port}/v1",
                        "apiKey": "bench",
                        "api": "openai-completions",
                        "models": [{"id": "fast"}, {"id": "tick"}, {"id": "big"}],
                    }
                }
            },
            "agents": {
                "defaults": {"model": "bench/fast", "workspace": str(state / "workspace")},
                "list": [
                    {"id": "main", "default": True},
                    {"id": "tick", "model": "bench/tick"},
                    {"id": "big", "model": "bench/big"},
                ],
            },
        }
        if session is not None:
            config["session"] = session
        path = state / "openclaw.json5"
        path.write_text(json.dumps(config, indent=2))
        env = dict(self.env, OPENCLAW_STATE_DIR=str(state))
        argv = self.python("-m", "openclaw_twisted.cli", "gateway", "--config", str(path))
        if workers > 1:
            argv += ["--workers", str(workers)]
        gw = Proc(f"gateway-{self.gateways}", [*argv, "--port", "0"], self.out, LISTENING, env)
        while get(gw.port, "/readyz") != 200:
            if time.monotonic() - gw.started > 30:
                gw.stop()
                raise SystemExit(f"bench: {gw.name} never became ready, see {self.out}")
            time.sleep(0.005)
        if workers > 1:
            return gw  # its RSS and start time are N processes': not scenario 6's figures
        self.ready_times.append(time.monotonic() - gw.started)
        time.sleep(self.mode.settle)
        self.idle.append(gw.status("VmRSS"))
        return gw

    # -- load --------------------------------------------------------------------------------

    def closed_loop(
        self, server: Proc, connections: int, *, user: str = "", token: str = TOKEN
    ) -> dict[str, float]:
        """
        Requests/s and latency (ms) of ``connections`` clients sending FAST for a while, and
        requests per CPU-second of ``server`` (what other processes on the machine can't skew).
        """
        if self.mode.warmup:
            self._closed_loop(server.port, connections, self.mode.warmup, user, token)
        cpu = server.cpu()
        r = self._closed_loop(server.port, connections, self.mode.seconds, user, token)
        r["per_cpu"] = r["rps"] * self.mode.seconds / max(server.cpu() - cpu, 0.01)
        return r

    def _closed_loop(
        self, port: int, connections: int, seconds: float, user: str, token: str
    ) -> dict[str, float]:
        body = json.dumps(FAST)
        if self.wrk:
            env = dict(self.env, BENCH_BODY=body, BENCH_TOKEN=token, BENCH_USER=user)
            argv = [self.wrk, f"-t{connections}", f"-c{connections}", f"-d{math.ceil(seconds)}s"]
            argv += ["--timeout", "10s", "-s", str(HERE / "post.lua")]
            argv.append(f"http://127.0.0.1:{port}/v1/chat/completions")
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if "BENCH " not in done.stdout:
                raise SystemExit(f"bench: wrk failed: {done.stdout}{done.stderr}")
            r = json.loads(done.stdout.split("BENCH ", 1)[1])
            return {
                "rps": r["requests"] / (r["duration_us"] / 1e6),
                "p50": r["p50_us"] / 1e3,
                "p99": r["p99_us"] / 1e3,
                "errors": r["socket_errors"] + r["status_errors"],
            }
        options = self.client_options(port, FAST, token, connections=connections, user=user)
        r = self.client("load", dict(options, duration=seconds))
        return {
            "rps": r["requests"] / r["seconds"],
            "p50": r["latency_ms"]["p50"],
            "p99": r["latency_ms"]["p99"],
            "errors": r["errors"],
        }

    def client_options(
        self,
        port: int,
        body: dict[str, Any],
        token: str,
        path: str = "/v1/chat/completions",
        **kw: Any,
    ) -> Any:
        return dict(host="127.0.0.1", port=port, path=path, body=body, token=token, **kw)

    def client(self, mode: str, options: dict[str, Any]) -> Any:
        argv = self.python("-m", "bench.client", mode, json.dumps(options))
        done = subprocess.run(
            argv, env=self.env, cwd=REPO, capture_output=True, text=True, preexec_fn=raise_nofile
        )
        if done.returncode:
            raise SystemExit(f"bench: client {mode} failed:\n{done.stderr}")
        return json.loads(done.stdout)

    def measure(self, label: str, procs: list[Proc], run: Any) -> Any:
        """Run ``run()``, noting the CPU seconds each process (and the load generator) used."""
        before = [p.cpu() for p in procs]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        result = run()
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = [f"{p.name} {p.cpu() - b:.1f}" for p, b in zip(procs, before, strict=True)]
        loadgen = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        self.notes.append(
            f"{label}: CPU s over {wall:.1f} s wall: load generator {loadgen:.1f}, "
            + ", ".join(used)
        )
        return result

    def row(self, figure: str, target: str, measured: str, ratio: str, ok: bool) -> None:
        self.rows.append((figure, target, measured, ratio, ok))

    # -- scenarios ---------------------------------------------------------------------------

    def run(self, scenarios: set[str], profile: bool) -> None:
        provider = self.provider = self.start_provider()
        try:
            self.scenarios(provider, scenarios, profile)
        finally:
            provider.stop()

    def scenarios(self, provider: Proc, scenarios: set[str], profile: bool) -> None:
        if scenarios & {"1", "2", "3"}:
            floor = self.start_floor(provider)
            try:
                gw = self.start_gateway(provider)
                try:
                    if "1" in scenarios:
                        self.latency(provider, gw)
                    stateless = self.throughput(provider, floor, gw)
                    if profile:
                        self.profile_closed_loop(gw, "2")
                finally:
                    gw.stop()
                if self.workers > 1:
                    self.scaled(provider, stateless)
            finally:
                floor.stop()
            if "3" in scenarios:
                self.sessions(provider, stateless, profile)
        if "4" in scenarios:
            self.fan_out(provider, profile)
        if "5" in scenarios:
            self.slow_reader(provider)
        if "7" in scenarios:
            self.responses_streams(provider)
        if "8" in scenarios:
            self.cluster(provider)
        if not self.ready_times:
            self.start_gateway(provider).stop()
        idle, ready = statistics.median(self.idle), statistics.median(self.ready_times)
        of = f"of {len(self.ready_times)} starts"
        self.row(
            "6. idle RSS after start (median)",
            "≤ 60 MB",
            f"{idle / MIB:.1f} MB",
            f"max {max(self.idle) / MIB:.1f} MB {of}",
            idle <= 60 * MIB,
        )
        self.row(
            "6. start to ready (median)",
            "≤ 1 s",
            f"{ready:.2f} s",
            f"max {max(self.ready_times):.2f} s {of}",
            ready <= 1.0,
        )

    def latency(self, provider: Proc, gw: Proc) -> None:
        direct = self.measure("1 direct", [provider], lambda: self.closed_loop(provider, 1))
        via = self.measure("1 gateway", [provider, gw], lambda: self.closed_loop(gw, 1))
        added = via["p50"] - direct["p50"]
        self.row(
            "1. latency p50, gateway - direct",
            "≤ 1.5 ms",
            f"{added:.2f} ms",
            f"{via['p50']:.2f} vs {direct['p50']:.2f} ms",
            added <= 1.5 and not via["errors"],
        )
        self.check_errors("1", via)

    def throughput(self, provider: Proc, floor: Proc, gw: Proc) -> dict[str, float]:
        direct = self.measure("2 direct", [provider], lambda: self.closed_loop(provider, 32))
        proxy = self.measure("2 floor", [provider, floor], lambda: self.closed_loop(floor, 32))
        via = self.measure("2 gateway", [provider, gw], lambda: self.closed_loop(gw, 32))
        ratio = _ratio(via["rps"], proxy["rps"])
        self.row(
            "2. req/s, 32 clients, stateless",
            "≥ 50% of floor",
            f"{via['rps']:.0f} req/s, p99 {via['p99']:.1f} ms",
            f"{ratio:.0%} of {proxy['rps']:.0f} (floor p99 {proxy['p99']:.1f} ms); "
            f"per CPU-s {_ratio(via['per_cpu'], proxy['per_cpu']):.0%}",
            ratio >= 0.5 and not via["errors"],
        )
        headroom = _ratio(direct["rps"], via["rps"])
        self.row(
            "   load generator ceiling (direct)",
            "≥ 3x gateway",
            f"{direct['rps']:.0f} req/s, p99 {direct['p99']:.1f} ms",
            f"{headroom:.1f}x",
            headroom >= 3,
        )
        self.check_errors("2", via)
        stateless: dict[str, float] = via
        return stateless

    def scaled(self, provider: Proc, one: dict[str, float]) -> None:
        """Scenario 2 against ``--workers N``, beside the one-process figure just measured."""
        n = self.workers
        gw = self.start_gateway(provider, workers=n)
        try:
            label = f"2 gateway --workers {n}"
            many = self.measure(label, [provider, gw], lambda: self.closed_loop(gw, 32))
        finally:
            gw.stop()
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        ratio = many["rps"] / one["rps"]
        self.row(
            f"2. req/s with --workers {n}",
            "≥ 1.6x one process" if n == 2 else "more than one process",
            f"{many['rps']:.0f} req/s, p99 {many['p99']:.1f} ms",
            f"{ratio:.2f}x of {one['rps']:.0f} (load average {load}; load generator and "
            "fake provider share the cores)",
            ratio >= (1.6 if n == 2 else 1.0) and not many["errors"],
        )
        self.check_errors(f"2 --workers {n}", many)

    def sessions(self, provider: Proc, stateless: dict[str, float], profile: bool) -> None:
        gw = self.start_gateway(provider)
        try:
            via = self.measure(
                "3 gateway", [provider, gw], lambda: self.closed_loop(gw, 32, user="client")
            )
            if profile:
                self.profile_closed_loop(gw, "3", user="client")
        finally:
            gw.stop()
        ratio = _ratio(via["rps"], stateless["rps"])
        self.row(
            "3. req/s, 32 clients, with sessions",
            "≥ 50% of 2.",
            f"{via['rps']:.0f} req/s, p99 {via['p99']:.1f} ms",
            f"{ratio:.0%}; per CPU-s {_ratio(via['per_cpu'], stateless['per_cpu']):.0%}",
            ratio >= 0.5 and not via["errors"],
        )
        self.check_errors("3", via)

    def start_redis(self) -> subprocess.Popen[bytes] | None:
        """Debian's ``redis-server`` on a free port, durable as the README says to run it."""
        if shutil.which("redis-server") is None:
            return None
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        directory = self.out / "redis"
        directory.mkdir(exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)]
        argv += ["--logfile", "redis.log"]
        redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        redis.port = port  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return redis
            except OSError:
                time.sleep(0.01)
        redis.kill()
        raise SystemExit("bench: redis-server did not start")

    def spread_loop(self, gws: list[Proc], connections: int, user: str) -> dict[str, float]:
        """``closed_loop`` with the clients spread evenly over several gateways at once."""
        each = connections // len(gws)
        results: list[dict[str, float]] = [{} for _ in gws]

        def one(i: int, gw: Proc) -> None:
            # Each load generator numbers its clients from 1: a prefix of its own keeps one
            # client's session on one gateway, as a balancer with sticky sessions would.
            results[i] = self.closed_loop(gw, each, user=f"{user}{i}" if user else "")

        threads = [threading.Thread(target=one, args=(i, gw)) for i, gw in enumerate(gws)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {
            "rps": sum(r["rps"] for r in results),
            "p50": max(r["p50"] for r in results),
            "p99": max(r["p99"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }

    def cluster(self, provider: Proc) -> None:
        """Scenarios 2 and 3 against 2 gateways on one Redis, beside 1 with the file store."""
        redis = self.start_redis()
        if redis is None:
            self.notes.append("8: skipped (no redis-server on PATH; apt-get install redis-server)")
            return
        try:
            one = self.start_gateway(provider)
            try:
                file_2 = self.measure(
                    "8 file 2", [provider, one], lambda: self.closed_loop(one, 32)
                )
                file_3 = self.measure(
                    "8 file 3", [provider, one], lambda: self.closed_loop(one, 32, user="client")
                )
            finally:
                one.stop()
            url = f"redis://127.0.0.1:{redis.port}"  # type: ignore[attr-defined]
            shared = {"store": "redis", "redis": {"url": url}}
            gws = [self.start_gateway(provider, shared) for _ in range(2)]
            try:
                procs = [provider, *gws]
                two_2 = self.measure("8 redis 2", procs, lambda: self.spread_loop(gws, 32, ""))
                two_3 = self.measure(
                    "8 redis 3", procs, lambda: self.spread_loop(gws, 32, "client")
                )
            finally:
                for gw in gws:
                    gw.stop()
        finally:
            redis.terminate()
            redis.wait(10)
        for label, two, file in (("stateless", two_2, file_2), ("with sessions", two_3, file_3)):
            ratio = _ratio(two["rps"], file["rps"])
            self.row(
                f"8. req/s, 32 clients, {label}: 2 gateways on Redis",
                "report",
                f"{two['rps']:.0f} req/s, p99 {two['p99']:.1f} ms",
                f"{ratio:.2f}x of 1 gateway, file store ({file['rps']:.0f} req/s, "
                f"p99 {file['p99']:.1f} ms)",
                not two["errors"],
            )
            self.check_errors("8", two)

    def fan_out(self, provider: Proc, profile: bool) -> None:
        m = self.mode
        body = {"model": "tick", "stream": True, "messages": FAST["messages"]}
        opts = self.client_options(provider.port, body, "", streams=m.streams, chunks=m.chunks)
        opts.update(ramp=m.ramp, timeout=m.streams / m.ramp + m.chunks / 20 + 60)
        direct = self.measure("4 direct", [provider], lambda: self.client("streams", opts))
        gw = self.start_gateway(provider)
        try:
            idle = self.idle[-1]
            opts.update(port=gw.port, token=TOKEN, body=dict(body, model="openclaw/tick"))
            with Sampler(gw) as rss:
                via = self.measure(
                    "4 gateway", [provider, gw], lambda: self.client("streams", opts)
                )
            if profile:
                seconds = m.streams / m.ramp + m.chunks / 20
                self.profile(gw, "4", seconds, lambda: self.client("streams", opts))
        finally:
            gw.stop()
        ok = via["results"].get("ok", 0)
        self.row(
            f"4. streams complete, in order ({m.chunks} chunks)",
            f"{m.streams}/{m.streams}",
            f"{ok}/{m.streams}",
            _results(via["results"]),
            ok == m.streams,
        )
        added = via["delay_ms"]["p99"] - direct["delay_ms"]["p99"]
        self.row(
            "4. added per-chunk delay p99",
            "≤ 10 ms",
            f"{added:.1f} ms",
            f"{via['delay_ms']['p99']:.1f} vs {direct['delay_ms']['p99']:.1f} ms direct",
            added <= 10 and direct["results"].get("ok", 0) == m.streams,
        )
        per = (rss.peak - idle) / m.streams
        self.row(
            "4. peak RSS per stream above idle",
            "≤ 64 KiB",
            f"{per / KIB:.1f} KiB",
            f"peak {rss.peak / MIB:.0f} MB, idle {idle / MIB:.0f} MB",
            per <= 64 * KIB,
        )

    def slow_reader(self, provider: Proc) -> None:
        m = self.mode
        gw = self.start_gateway(provider)
        body = {"model": "openclaw/big", "stream": True, "messages": FAST["messages"]}
        opts = self.client_options(gw.port, body, TOKEN, rate=m.read_rate)
        try:
            idle = self.idle[-1]
            with Sampler(gw) as rss:
                r = self.measure("5 gateway", [provider, gw], lambda: self.client("slow", opts))
        finally:
            gw.stop()
        growth = rss.peak - idle
        complete = r["status"] == 200 and r["content_bytes"] == m.big_bytes
        self.row(
            f"5. slow reader, {m.big_bytes / 1e6:g} MB at {m.read_rate / 1e6:g} MB/s: RSS growth",
            "≤ 8 MB",
            f"{growth / MIB:.1f} MB",
            f"{r['content_bytes'] / 1e6:.1f} MB in {r['wall_s']:.1f} s"
            + ("" if complete else f" INCOMPLETE (status {r['status']})"),
            growth <= 8 * MIB and complete,
        )

    def responses_streams(self, provider: Proc) -> None:
        """
        A tenth of scenario 4's fan-out through ``POST /v1/responses`` (``store: false``, as
        stateless as 4), then the same through chat completions on the same gateway: the
        Responses edge's events cost against the chat chunks.
        """
        m = self.mode
        streams = max(5, m.streams // 10)
        opts = self.client_options(
            provider.port,
            {"model": "tick", "stream": True, "messages": FAST["messages"]},
            "",
            streams=streams,
            chunks=m.chunks,
        )
        opts.update(ramp=m.ramp, timeout=streams / m.ramp + m.chunks / 20 + 60)
        direct = self.measure("7 direct", [provider], lambda: self.client("streams", opts))
        gw = self.start_gateway(provider)
        try:
            chat = dict(opts, port=gw.port, token=TOKEN)
            chat["body"] = dict(opts["body"], model="openclaw/tick")
            responses = dict(chat, path="/v1/responses")
            responses["body"] = {
                "model": "openclaw/tick",
                "stream": True,
                "store": False,
                "input": "Say hello.",
            }
            via = self.measure(
                "7 gateway responses", [provider, gw], lambda: self.client("streams", responses)
            )
            as_chat = self.measure(
                "7 gateway chat", [provider, gw], lambda: self.client("streams", chat)
            )
        finally:
            gw.stop()
        ok = via["results"].get("ok", 0)
        self.row(
            f"7. Responses streams complete, in order ({m.chunks} chunks)",
            f"{streams}/{streams}",
            f"{ok}/{streams}",
            _results(via["results"]),
            ok == streams,
        )
        added = via["delay_ms"]["p99"] - direct["delay_ms"]["p99"]
        self.row(
            "7. Responses added per-chunk delay p99",
            "≤ 10 ms",
            f"{added:.1f} ms",
            f"{via['delay_ms']['p99']:.1f} vs {direct['delay_ms']['p99']:.1f} ms direct, "
            f"{as_chat['delay_ms']['p99']:.1f} ms as chat completions",
            added <= 10 and direct["results"].get("ok", 0) == streams,
        )

    def profile(self, gw: Proc, label: str, seconds: float, run: Callable[[], object]) -> None:
        """py-spy on the gateway for ``seconds`` while ``run()`` loads it (a separate pass)."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.path.exists(spy):
            self.notes.append("profile: py-spy is not installed (pip install py-spy)")
            return
        raw = self.out / f"profile-gateway-{label}.txt"
        argv = [spy, "record", "-p", str(gw.pid), "-d", str(max(1, round(seconds))), "-r", "250"]
        argv += ["-f", "raw", "--nonblocking", "-o", str(raw)]
        spying = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches
        run()
        spying.wait()
        if raw.exists():
            self.notes.append(f"profile of the gateway under scenario {label} ({raw}):")
            self.notes.extend("  " + line for line in summarize(raw.read_text()))
        else:
            self.notes.append("profile: py-spy recorded nothing (ptrace not permitted?)")

    def profile_closed_loop(self, gw: Proc, label: str, user: str = "") -> None:
        seconds = max(2.0, self.mode.seconds)
        self.profile(
            gw, label, seconds, lambda: self._closed_loop(gw.port, 32, seconds, user, TOKEN)
        )

    def check_errors(self, label: str, result: dict[str, float]) -> None:
        if result["errors"]:
            self.notes.append(f"{label}: {result['errors']:.0f} requests failed")


LISTENING = r"openclaw gateway listening on http://[\d.]+:(\d+)"


def _results(results: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(results.items()))


def get(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def summarize(raw: str, top: int = 12) -> list[str]:
    """The hottest functions of a py-spy raw (collapsed) profile: own and inclusive samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return ["(no samples)"]
    lines = [f"{samples} samples; own time:"]
    lines += [f"{n / samples:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive, openclaw_twisted only (below the event loop):")
    ours = [
        (f, n)
        for f, n in total.most_common()
        if "openclaw_twisted" in f and "cli.py" not in f and n < 0.8 * samples
    ][:top]
    lines += [f"{n / samples:6.1%}  {f}" for f, n in ours]
    return lines


def _frame(frame: str) -> str:
    # py-spy: "function (path/to/file.py:line)"; keep the function and the file, not the line.
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    path = m.group(2)
    for marker in ("site-packages/", "openclaw_twisted/", "lib/python"):
        if marker in path:
            path = ("openclaw_twisted/" if marker == "openclaw_twisted/" else "") + path.split(
                marker, 1
            )[1]
            break
    return f"{path}:{m.group(1)}"


def find_wrk(install: bool, say: TextIO) -> str | None:
    """``wrk``, installed from Debian's package when missing and allowed; else None."""
    wrk = shutil.which("wrk")
    if wrk or not install or not shutil.which("apt-get"):
        return wrk
    say.write("bench: installing wrk (apt-get install -y wrk)...\n")
    for step in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"]):
        subprocess.run(step, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if step[1] == "update":
            subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def machine(wrk: str | None) -> list[str]:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    import twisted

    loadgen = "wrk " + _wrk_version(wrk) if wrk else "python -m bench.client load (no wrk)"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"machine: {os.cpu_count()} CPUs, {cpu.group(1) if cpu else '?'}, "
        f"{int(mem.group(1)) / MIB if mem else 0:.1f} GiB RAM, {platform.platform()}, "
        f"load average {load} at start",
        f"software: Python {platform.python_version()}, Twisted {twisted.__version__}; "
        f"load generator: {loadgen}",
    ]


def _wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def table(rows: list[tuple[str, str, str, str, bool]]) -> list[str]:
    head = ("figure", "target", "measured", "ratio / detail", "result")
    cells = [head, *((f, t, m, r, "PASS" if ok else "MISS") for f, t, m, r, ok in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"

    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(c) for c in cells[1:]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="200 streams, 5 s runs (~1 min)")
    group.add_argument("--smoke", action="store_true", help="a few requests each (seconds)")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under 2.")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    parser.add_argument("--python-load", action="store_true", help="use the Python load client")
    parser.add_argument(
        "--only", default="12345678", help="the scenarios to run, e.g. 45 (3 includes 2)"
    )
    parser.add_argument("--out", help="where logs and state go (default: a temporary directory)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run scenario 2 against `gateway --workers N` and print the ratio",
    )
    options = parser.parse_args(argv)
    mode_name = "smoke" if options.smoke else "quick" if options.quick else "full"
    mode = MODES[mode_name]
    wrk = None
    if not options.python_load:
        wrk = find_wrk(not (options.no_install or options.smoke), sys.stderr)
    out = Path(options.out or tempfile.mkdtemp(prefix="openclaw-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    bench = Bench(mode, out, wrk, env, workers=options.workers)
    header = [f"openclaw-twisted bench ({mode_name}); logs in {out}", *machine(wrk)]
    sys.stdout.write("\n".join(header) + "\n")
    sys.stdout.flush()
    bench.run(set(options.only), options.profile)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    bench.notes.append(f"load average {load} at the end (other processes share these CPUs)")
    sys.stdout.write("\n".join(["", *table(bench.rows), "", *bench.notes]) + "\n")
    (out / "results.json").write_text(json.dumps({"header": header, "rows": bench.rows}, indent=1))
    return 0
