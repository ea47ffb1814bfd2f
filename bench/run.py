"""
``python -m bench``: start a fake provider, the floor proxy and the gateway on 127.0.0.1, run the
scenarios of issue 6 against them in one run, and print the figures, their targets and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
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


def descendants(pid: int) -> list[int]:
    """
    ``pid``'s children, their children and so on (``gateway --workers N``'s workers), from
    ``/proc/<pid>/task/<tid>/children``; a process that is gone has none.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of the children it has waited for (a restarted worker's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone between listing and reading
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _status(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * KIB if m else 0


class Watched:
    """
    A process whose RSS and CPU the bench reads from ``/proc``: summed over it and its
    descendants, so ``gateway --workers N`` (a supervisor and N workers) counts as one server.
    """

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid

    def pids(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def status(self, key: str) -> int:
        """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM), summed over the processes."""
        return sum(_status(pid, key) for pid in self.pids())

    def reset_peak(self) -> None:
        """Make VmHWM start again from the current RSS, in every process."""
        for pid in self.pids():
            with contextlib.suppress(OSError):  # gone meanwhile
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def cpu_by_pid(self) -> dict[int, float]:
        return {pid: _cpu(pid) for pid in self.pids()}

    def cpu(self) -> float:
        return sum(self.cpu_by_pid().values())


class Proc(Watched):
    """A server child process that prints its port."""

    #: VmRSS (summed over its processes) once ready and settled; set by ``start_gateway``.
    idle = 0

    def __init__(self, name: str, argv: list[str], out: Path, ready: str, env: dict[str, str]):
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            preexec_fn=raise_nofile,
        )
        super().__init__(name, self.popen.pid)
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

    def stop(self) -> None:
        self.popen.terminate()  # a --workers supervisor passes it on to its workers
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            stuck = descendants(self.pid)
            self.popen.kill()
            self.popen.wait()
            for pid in stuck:  # workers a killed supervisor leaves behind
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


class Sampler:
    """
    The highest VmRSS of some servers together (each summed over its processes), sampled every
    50 ms while a scenario runs; at the end at least the sum of their VmHWMs (exact for one
    process; an upper bound for several, which may peak at different moments).
    """

    def __init__(self, *procs: Watched) -> None:
        self.procs = procs
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        for p in self.procs:
            p.reset_peak()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, sum(p.status("VmRSS") for p in self.procs))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, sum(p.status("VmHWM") for p in self.procs))


class Redis(Watched):
    """Debian's ``redis-server`` on a free port, durable (AOF, fsync on every write)."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        directory.mkdir(exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)]
        argv += ["--logfile", "redis.log"]
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        super().__init__("redis", self.popen.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.01)
        self.popen.kill()
        raise SystemExit("bench: redis-server did not start")

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(10)


@attrs.frozen
class Usage:
    """The CPU seconds one measurement took, process by process, and what the cores had."""

    wall: float
    cores: int
    loadgen: float
    used: dict[str, float]
    idle: float  # CPU seconds no process used (all cores, from /proc/stat)

    def share(self) -> str:
        """Each one's share of the cores' time; the rest is other processes' or idle."""
        have = self.wall * self.cores
        parts = [*self.used.items(), ("load generator", self.loadgen)]
        other = have - self.idle - sum(cpu for _, cpu in parts)
        parts += [("other processes", max(other, 0.0)), ("idle", self.idle)]
        return ", ".join(f"{name} {cpu / have:.0%}" for name, cpu in parts) + (
            f" of {self.cores} cores over {self.wall:.1f} s"
        )


@attrs.frozen
class Loop:
    """A closed-loop figure (``spread_loop``'s dict) and the label it was measured under."""

    result: dict[str, float]
    label: str


@attrs.frozen
class FanOut:
    """Scenario 4 through some gateways: the stream client's figures and the servers' RSS."""

    result: dict[str, Any]
    peak: int
    idle: int
    streams: int
    options: dict[str, Any]
    label: str

    @property
    def ok(self) -> int:
        ok: int = self.result["results"].get("ok", 0)
        return ok

    @property
    def p99(self) -> float:
        p99: float = self.result["delay_ms"]["p99"]
        return p99

    @property
    def per_stream(self) -> float:
        return (self.peak - self.idle) / self.streams


@attrs.frozen
class Scaled:
    """Scenarios 2 and 3 ("2", "3") and 4 against one of scenario 8's topologies."""

    loops: dict[str, Loop]
    streams: FanOut
    reused: bool


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
    #: ``--workers N``: scenario 8's topology (b), ``gateway --workers N``.
    workers: int = 2
    #: Scenarios 2, 3 and 4's figures against one gateway, when measured in this run (8 reuses
    #: them as its topology (a)): "2", "3" (closed loops), "4" (FanOut), "4 direct".
    single: dict[str, Any] = attrs.Factory(dict)
    usage: dict[str, Usage] = attrs.Factory(dict)  # each measurement's, by its label

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
        ready = time.monotonic() - gw.started
        time.sleep(self.mode.settle)
        gw.idle = gw.status("VmRSS")
        if workers == 1:  # N processes' RSS and start time are not scenario 6's figures
            self.ready_times.append(ready)
            self.idle.append(gw.idle)
        return gw

    def start_gateways(
        self, provider: Proc, count: int, session: dict[str, Any] | None = None
    ) -> list[Proc]:
        """``count`` gateways; the ones already started are stopped if a later one fails."""
        gws: list[Proc] = []
        try:
            for _ in range(count):
                gws.append(self.start_gateway(provider, session))
        except BaseException:
            for gw in gws:
                gw.stop()
            raise
        return gws

    # -- load --------------------------------------------------------------------------------

    def closed_loop(
        self, server: Proc, connections: int, *, user: str = "", token: str = TOKEN
    ) -> dict[str, float]:
        """
        Requests/s and latency (ms) of ``connections`` clients sending FAST for a while, and
        requests per CPU-second of ``server`` (what other processes on the machine can't skew).
        """
        return self.spread_loop([server], connections, user, token)

    def spread_loop(
        self, servers: list[Proc], connections: int, user: str = "", token: str = TOKEN
    ) -> dict[str, float]:
        """
        ``closed_loop`` with the clients spread evenly over several gateways at once, each
        client on one connection to one gateway for the whole run (as a balancer with sticky
        sessions would keep it). Requests/s and per CPU-s are the sums; p50 and p99 the worse.
        """
        each = connections // len(servers)
        # Each load generator numbers its clients from 1: a prefix of its own per gateway
        # keeps every client's session on one gateway.
        users = [f"{user}{i}" if user else "" for i in range(len(servers))]
        if len(servers) == 1:
            users = [user]

        def run(seconds: float) -> dict[str, float]:
            results: list[dict[str, float]] = [{} for _ in servers]

            def one(i: int) -> None:
                results[i] = self._closed_loop(servers[i].port, each, seconds, users[i], token)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(servers))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if not all(results):
                raise SystemExit("bench: a load generator failed (see above)")
            return {
                "rps": sum(r["rps"] for r in results),
                "p50": max(r["p50"] for r in results),
                "p99": max(r["p99"] for r in results),
                "errors": sum(r["errors"] for r in results),
            }

        if self.mode.warmup:
            run(self.mode.warmup)
        cpu = sum(server.cpu() for server in servers)
        r = run(self.mode.seconds)
        used = sum(server.cpu() for server in servers) - cpu
        r["per_cpu"] = r["rps"] * self.mode.seconds / max(used, 0.01)
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

    def measure(self, label: str, procs: list[Watched], run: Callable[[], Any]) -> Any:
        """
        Run ``run()``, noting the CPU seconds each process (a gateway's workers one by one) and
        the load generator used, beside what the cores had, and the load average after it.
        """
        before = [p.cpu_by_pid() for p in procs]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        idle = _idle()
        start = time.monotonic()
        result = run()
        wall = time.monotonic() - start
        idle = _idle() - idle
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used, totals = [], {}
        for p, b in zip(procs, before, strict=True):
            a = p.cpu_by_pid()
            totals[p.name] = sum(a.values()) - sum(b.values())
            line = f"{p.name} {totals[p.name]:.1f}"
            if len(a) > 1:  # a supervisor and its workers
                workers = " + ".join(f"{a[pid] - b.get(pid, 0.0):.1f}" for pid in a if pid != p.pid)
                line += f" (supervisor {a[p.pid] - b.get(p.pid, 0.0):.1f}, workers {workers})"
            used.append(line)
        loadgen = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        cores = os.cpu_count() or 1
        self.usage[label] = Usage(wall, cores, loadgen, totals, idle)
        self.notes.append(
            f"{label}: CPU s over {wall:.1f} s wall ({wall * cores:.1f} on {cores} cores, "
            f"{idle:.1f} idle; load average {_load()[0]} after): load generator {loadgen:.1f}, "
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
            self.scale_out(provider)
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
        self.single["2"] = Loop(via, "2 gateway")
        return stateless

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
        self.single["3"] = Loop(via, "3 gateway")

    def start_redis(self) -> Redis | None:
        """Debian's ``redis-server`` on a free port, durable as the README says to run it."""
        return Redis(self.out / "redis") if shutil.which("redis-server") else None

    def stream_options(
        self, ports: list[int], model: str, token: str, streams: int | None = None
    ) -> dict[str, Any]:
        """
        Scenario 4's ``bench.client streams`` options (``streams`` of them, else the mode's),
        round robin over ``ports``.
        """
        m = self.mode
        n = m.streams if streams is None else streams
        body = {"model": model, "stream": True, "messages": FAST["messages"]}
        opts: dict[str, Any] = self.client_options(
            ports[0], body, token, streams=n, chunks=m.chunks
        )
        opts.update(ports=ports, ramp=m.ramp, timeout=n / m.ramp + m.chunks / 20 + 60)
        return opts

    def fan_out_direct(self, provider: Proc, label: str) -> dict[str, Any]:
        """Scenario 4 straight to the provider: measured once a run, the delay to subtract."""
        if "4 direct" not in self.single:
            opts = self.stream_options([provider.port], "tick", "")
            run = self.measure(label, [provider], lambda: self.client("streams", opts))
            self.single["4 direct"] = run
        direct: dict[str, Any] = self.single["4 direct"]
        return direct

    def fan_out_via(self, label: str, gws: list[Proc], procs: list[Watched]) -> FanOut:
        """Scenario 4 through ``gws`` (streams split evenly), their RSS sampled meanwhile."""
        opts = self.stream_options([gw.port for gw in gws], "openclaw/tick", TOKEN)
        with Sampler(*gws) as rss:
            result = self.measure(label, procs, lambda: self.client("streams", opts))
        idle = sum(gw.idle for gw in gws)
        return FanOut(result, rss.peak, idle, self.mode.streams, opts, label)

    def fan_out(self, provider: Proc, profile: bool) -> None:
        m = self.mode
        direct = self.fan_out_direct(provider, "4 direct")
        gw = self.start_gateway(provider)
        try:
            via = self.fan_out_via("4 gateway", [gw], [provider, gw])
            self.single["4"] = via
            if profile:
                seconds = m.streams / m.ramp + m.chunks / 20
                self.profile(gw, "4", seconds, lambda: self.client("streams", via.options))
        finally:
            gw.stop()
        self.row(
            f"4. streams complete, in order ({m.chunks} chunks)",
            f"{m.streams}/{m.streams}",
            f"{via.ok}/{m.streams}",
            _results(via.result["results"]),
            via.ok == m.streams,
        )
        added = via.p99 - direct["delay_ms"]["p99"]
        self.row(
            "4. added per-chunk delay p99",
            "≤ 10 ms",
            f"{added:.1f} ms",
            f"{via.p99:.1f} vs {direct['delay_ms']['p99']:.1f} ms direct",
            added <= 10 and direct["results"].get("ok", 0) == m.streams,
        )
        self.row(
            "4. peak RSS per stream above idle",
            "≤ 64 KiB",
            f"{via.per_stream / KIB:.1f} KiB",
            f"peak {via.peak / MIB:.0f} MB, idle {via.idle / MIB:.0f} MB",
            via.per_stream <= 64 * KIB,
        )

    def scale_out(self, provider: Proc) -> None:
        """
        Scenarios 2, 3 and 4 against (a) one gateway on the file store, (b) ``gateway
        --workers N`` on it and (c) two gateways on one redis-server, side by side, with
        ratios against (a). (a) reuses this run's scenarios 2, 3 and 4 when they ran (same
        settings, a fresh gateway each), else it is measured here.
        """
        n = self.workers
        direct = self.fan_out_direct(provider, "8 direct 4")
        tops = {"(a)": self.topology("(a)", provider, lambda: [self.start_gateway(provider)])}
        tops["(b)"] = self.topology(
            "(b)", provider, lambda: [self.start_gateway(provider, workers=n)], reuse=False
        )
        redis = self.start_redis()
        if redis is None:
            self.notes.append(
                "8 (c): skipped (no redis-server on PATH; apt-get install redis-server)"
            )
        else:
            try:
                url = f"redis://127.0.0.1:{redis.port}"
                shared = {"store": "redis", "redis": {"url": url}}
                tops["(c)"] = self.topology(
                    "(c)",
                    provider,
                    lambda: self.start_gateways(provider, 2, shared),
                    [redis],
                    reuse=False,
                )
            finally:
                redis.stop()
        titles = {
            "(a)": "(a) 1 gateway, file store",
            "(b)": f"(b) --workers {n}, file store",
            "(c)": "(c) 2 gateways, one Redis",
        }
        a = tops["(a)"]
        if a.reused:
            self.notes.append("8 (a): the figures of scenarios 2, 3 and 4 above (this run)")
        for scenario, label in (("2", "stateless"), ("3", "with sessions")):
            one = a.loops[scenario].result
            for key, top in tops.items():
                r = top.loops[scenario].result
                target, ok = "report", True
                if key == "(a)":
                    target, detail = "baseline", f"per CPU-s {r['per_cpu']:.0f}"
                else:
                    ratio = _ratio(r["rps"], one["rps"])
                    detail = (
                        f"{ratio:.2f}x (a)'s req/s; p99 {_ratio(r['p99'], one['p99']):.2f}x; "
                        f"per CPU-s {_ratio(r['per_cpu'], one['per_cpu']):.2f}x"
                    )
                    if key == "(b)" and scenario == "2" and n == 2:
                        target, ok = "≥ 1.6x (a)", ratio >= 1.6
                    elif key == "(b)" and scenario == "2" and n > 2:
                        target, ok = "> 1x (a)", ratio > 1
                self.row(
                    f"8. {scenario}. req/s, 32 clients, {label}: {titles[key]}",
                    target,
                    f"{r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms",
                    detail,
                    ok and not r["errors"],
                )
                self.check_errors(f"8 {key} {scenario}", r)
        m = self.mode
        direct_ok = direct["results"].get("ok", 0) == m.streams
        direct_p99 = direct["delay_ms"]["p99"]
        a_added = a.streams.p99 - direct_p99
        for key, top in tops.items():
            fo = top.streams
            split = "/".join(str(v) for v in fo.result.get("per_port", {}).values())
            self.row(
                f"8. 4. streams complete, in order ({m.chunks} chunks): {titles[key]}",
                f"{m.streams}/{m.streams}",
                f"{fo.ok}/{m.streams}",
                _results(fo.result["results"]) + (f" (opened {split})" if "/" in split else ""),
                fo.ok == m.streams,
            )
        for key, top in tops.items():
            fo = top.streams
            added = fo.p99 - direct_p99
            bounded = key != "(c)"  # (b) must keep 4.'s target; Redis (c): report
            self.row(
                f"8. 4. added per-chunk delay p99: {titles[key]}",
                "≤ 10 ms" if bounded else "report",
                f"{added:.1f} ms",
                f"{fo.p99:.1f} vs {direct_p99:.1f} ms direct"
                + ("" if key == "(a)" else f"; (a) {a_added:.1f} ms"),
                (added <= 10 or not bounded) and direct_ok,
            )
        for key, top in tops.items():
            fo = top.streams
            self.row(
                f"8. 4. peak RSS per stream above idle: {titles[key]}",
                "≤ 64 KiB" if key == "(a)" else "report",
                f"{fo.per_stream / KIB:.1f} KiB",
                f"peak {fo.peak / MIB:.0f} MB, idle {fo.idle / MIB:.0f} MB"
                + ("" if key == "(a)" else f"; {_ratio(fo.per_stream, a.streams.per_stream):.2f}x"),
                fo.per_stream <= 64 * KIB or key != "(a)",
            )
        for key, top in tops.items():
            label = top.loops["2"].label
            if label in self.usage:
                self.notes.append(f"8 {key} 2, where the CPU went: {self.usage[label].share()}")

    def topology(
        self,
        key: str,
        provider: Proc,
        start: Callable[[], list[Proc]],
        extra: list[Watched] | None = None,
        *,
        reuse: bool = True,
    ) -> Scaled:
        """Scenarios 2 and 3 on gateways ``start()`` gives, then 4 on fresh ones (fresh RSS)."""
        known = self.single if reuse else {}
        loops: dict[str, Loop] = {k: known[k] for k in ("2", "3") if k in known}
        streams: FanOut | None = known.get("4")
        reused = len(loops) == 2 and streams is not None
        if len(loops) < 2:
            gws = start()
            try:
                procs = [provider, *gws, *(extra or [])]
                for scenario, user in (("2", ""), ("3", "client")):
                    if scenario not in loops:
                        label = f"8 {key} {scenario}"
                        load = functools.partial(self.spread_loop, gws, 32, user)
                        loops[scenario] = Loop(self.measure(label, procs, load), label)
            finally:
                for gw in gws:
                    gw.stop()
        if streams is None:
            gws = start()
            try:
                procs = [provider, *gws, *(extra or [])]
                streams = self.fan_out_via(f"8 {key} 4", gws, procs)
            finally:
                for gw in gws:
                    gw.stop()
        return Scaled(loops, streams, reused)

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
        opts = self.stream_options([provider.port], "tick", "", streams)
        direct = self.measure("7 direct", [provider], lambda: self.client("streams", opts))
        gw = self.start_gateway(provider)
        try:
            chat = self.stream_options([gw.port], "openclaw/tick", TOKEN, streams)
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


def _load() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


def _idle() -> float:
    """CPU seconds all cores have been idle (or waiting for I/O) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


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
    load = " ".join(_load())
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
    group.add_argument("--quick", action="store_true", help="200 streams, 5 s runs (~3 min)")
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
        default=2,
        help="scenario 8's topology (b) is `gateway --workers N` (default 2)",
    )
    options = parser.parse_args(argv)
    if options.workers < 1:
        parser.error("--workers must be 1 or more")
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
    load = " ".join(_load())
    bench.notes.append(f"load average {load} at the end (other processes share these CPUs)")
    sys.stdout.write("\n".join(["", *table(bench.rows), "", *bench.notes]) + "\n")
    (out / "results.json").write_text(json.dumps({"header": header, "rows": bench.rows}, indent=1))
    return 0
