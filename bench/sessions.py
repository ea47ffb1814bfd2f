"""``python -m bench.sessions``: ``/healthz`` p99 while session data grows (issue #17 item 1)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.run import LISTENING, TOKEN, Proc, get

#: What the gateway takes as ``user`` (openclaw_twisted.agents.store.USER_MAX_CHARS).
LARGEST_USER = 256


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Probe:
    """``GET /healthz`` every ``interval`` seconds on its own connection; latencies by phase."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        self.port, self.interval = port, interval
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            self.samples.setdefault(self.phase, []).append(time.monotonic() - started)
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Client:
    """One keep-alive connection per thread, posting chat completions."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    def post(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, float]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=300
            )
        data = json.dumps(body).encode()
        started = time.monotonic()
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                data,
                {
                    "Authorization": f"Bearer {TOKEN}",
                    "Content-Type": "application/json",
                    **(headers or {}),
                },
            )
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            self._local.conn = None
            status = 0
        return status, time.monotonic() - started


def chat(text: str, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "openclaw", "messages": [{"role": "user", "content": text}]}
    if user is not None:
        body["user"] = user
    return body


def start_gateway(out: Path, max_body: int) -> Proc:
    state = out / "state"
    state.mkdir()
    config = {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": True, "maxBodyBytes": max_body}}},
        },
        "agents": {"defaults": {"workspace": str(state / "workspace")}},
    }
    path = state / "openclaw.json5"
    path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ, OPENCLAW_STATE_DIR=str(state))
    argv = [sys.executable, "-m", "openclaw_twisted.cli", "gateway", "--config", str(path)]
    gw = Proc("gateway", [*argv, "--port", "0"], out, LISTENING, env)
    while get(gw.port, "/readyz") != 200:
        time.sleep(0.01)
    return gw


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-sessions-"))
    out.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(out, args.message_bytes * 2 + 1024 * 1024)
    probe = Probe(gw.port)
    client = Client(gw.port)
    results: dict[str, Any] = {"phases": {}}

    def phase(name: str) -> None:
        probe.phase = name
        results["phases"][name] = {"started": time.monotonic(), "rss_before": gw.status("VmRSS")}

    def end(name: str, **figures: Any) -> None:
        p = results["phases"][name]
        p["seconds"] = round(time.monotonic() - p.pop("started"), 2)
        p["rss_after"] = gw.status("VmRSS")
        p.update(figures)

    time.sleep(2)
    for label, size in (
        ("users-2MB", args.big_user_bytes),
        ("users-largest-allowed", LARGEST_USER),
    ):
        phase(label)
        codes: dict[int, int] = {}
        took: list[float] = []
        for i in range(60):
            user = f"{i:03d}" + "u" * (size - 3)
            status, seconds = client.post(chat("hi", user))
            codes[status] = codes.get(status, 0) + 1
            took.append(seconds)
        end(
            label,
            statuses=codes,
            request_p50_ms=percentile(took, 50) * 1000,
            last_ms=took[-1] * 1000,
        )

    phase("big-messages")
    deadline = time.monotonic() + args.phase_seconds
    status = 0
    took = []
    big = "m" * args.message_bytes
    for _ in range(args.turns):
        if time.monotonic() > deadline:
            break
        status, seconds = client.post(chat(big), {"X-OpenClaw-Session-Key": "agent:main:big"})
        took.append(seconds)
    end("big-messages", turn_ms=[round(t * 1000) for t in took], status=status)

    phase("many-users")
    n = args.users
    stamps: list[float] = [0.0] * n
    failed = [0]

    deadline = time.monotonic() + args.phase_seconds
    sent = [0]

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return  # the old code takes hours here: the figures say how far it got
        sent[0] += 1
        status, _ = client.post(chat("hi", f"user-{i:06d}"))
        if status != 200:
            failed[0] += 1
        stamps[i] = time.monotonic()

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    window = max(1, min(n, sent[0]) // 20)
    ordered = sorted(t for t in stamps if t)
    first = window / max(1e-9, ordered[window - 1] - started)
    last = window / max(1e-9, ordered[-1] - ordered[-window - 1])
    end(
        "many-users",
        requests=sent[0],
        failed=failed[0],
        first_req_s=round(first),
        last_req_s=round(last),
    )

    probe.stop()
    gw.stop()
    for name, p in results["phases"].items():
        samples = probe.samples.get(name, [])
        p["healthz_p50_ms"] = round(percentile(samples, 50) * 1000, 2)
        p["healthz_p99_ms"] = round(percentile(samples, 99) * 1000, 2)
        p["healthz_max_ms"] = round(max(samples, default=0) * 1000, 2)
        p["healthz_samples"] = len(samples)
    results["out"] = str(out)
    return results


def index_choices(sizes: tuple[int, ...] = (0, 1000, 20_000), tries: int = 50) -> dict[str, Any]:
    """
    What one new session costs the index (serialise + write + fsync, median ms) with ``n``
    sessions already in it, for each way of keeping it that was considered.
    """
    import sqlite3
    import uuid

    def entry() -> dict[str, Any]:
        return {"sessionId": str(uuid.uuid4()), "updatedAt": 1_700_000_000_000}

    def fsync_write(path: str, data: bytes, flags: int) -> None:
        fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def dir_fsync(d: str) -> None:
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def measure(n: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="bench-index-") as d:
            entries = {f"agent:main:openai-user:user-{i:06d}": entry() for i in range(n)}
            timings: dict[str, list[float]] = {}

            def timed(name: str, f: Any) -> None:
                for i in range(tries):
                    key = f"agent:main:openai-user:new-{i:06d}"
                    started = time.perf_counter()
                    f(key, entry())
                    timings.setdefault(name, []).append(time.perf_counter() - started)

            def rewrite(key: str, e: dict[str, Any]) -> None:  # main before this change
                entries[key] = e
                path = os.path.join(d, "sessions.json")
                fsync_write(
                    path + ".tmp",
                    json.dumps(entries, indent=2).encode(),
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                )
                os.replace(path + ".tmp", path)
                dir_fsync(d)

            def log_line(key: str, e: dict[str, Any]) -> None:  # this change
                line = json.dumps({"key": key, "entry": e}).encode() + b"\n"
                path = os.path.join(d, "sessions.json.log")
                fsync_write(path, line, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

            def per_file(key: str, e: dict[str, Any]) -> None:
                sub = os.path.join(d, "index.d")
                os.makedirs(sub, exist_ok=True)
                path = os.path.join(sub, e["sessionId"] + ".json")
                data = json.dumps({"key": key, **e}).encode()
                fsync_write(path, data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                dir_fsync(sub)

            db = sqlite3.connect(os.path.join(d, "sessions.sqlite"))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE s (key TEXT PRIMARY KEY, sid TEXT, updated INTEGER)")
            with db:
                db.executemany(
                    "INSERT INTO s VALUES (?, ?, ?)",
                    [(k, e["sessionId"], e["updatedAt"]) for k, e in entries.items()],
                )

            def sqlite(key: str, e: dict[str, Any]) -> None:
                with db:
                    db.execute("INSERT INTO s VALUES (?, ?, ?)", (key, e["sessionId"], 1))

            timed("rewrite sessions.json", rewrite)
            timed("append log line", log_line)
            timed("file per session", per_file)
            timed("sqlite (WAL, synchronous=FULL)", sqlite)
            db.close()
            return {k: round(percentile(v, 50) * 1000, 3) for k, v in timings.items()}

    return {str(n): measure(n) for n in sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__)
    parser.add_argument("--users", type=int, default=20_000, help="ordinary users (20000)")
    parser.add_argument("--big-user-bytes", type=int, default=2 * 1024 * 1024)
    parser.add_argument("--message-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--turns", type=int, default=6, help="turns of big messages (6)")
    parser.add_argument("--out", help="a directory for the state dir and logs")
    parser.add_argument(
        "--phase-seconds", type=float, default=600, help="stop a load phase after this (600)"
    )
    parser.add_argument(
        "--index", action="store_true", help="only compare ways of keeping the index"
    )
    args = parser.parse_args(argv)
    if args.index:
        print(json.dumps(index_choices(), indent=2))
        return 0
    results = run(args)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
