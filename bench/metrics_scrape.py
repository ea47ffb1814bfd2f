"""How long a ``/metrics`` render takes: one process, and across two workers' files."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

#: A worker that has seen some traffic: every route and status, outcomes, latencies.
FILL = textwrap.dedent(
    """
    from twisted.internet.task import Clock
    from openclaw_twisted.metrics import Metrics
    m = Metrics.create(Clock())
    routes = ["chat_completions", "models", "model", "health", "ready", "metrics", "none"]
    for r in routes:
        for status in (200, 400, 401, 404, 413, 429, 499, 502, 503):
            m.request_done(r, status)
    for outcome in ("ok", "aborted", "agent_timeout", "upstream_error", "unavailable"):
        m.runs.labels(outcome).inc()
    for i in range(1000):
        m.run_seconds.observe(i / 10)
        m.first_token_seconds.observe(i / 100)
    m.stream_opened("sse"); m.stream_opened("websocket")
    m.provider_errors.labels("upstream_error").inc()
    m.redis_errors.labels("timeout").inc()
    """
)
TIME = textwrap.dedent(
    """
    import time
    from twisted.internet.task import Clock
    from openclaw_twisted.metrics import Metrics
    exec(FILL) if FILL else None
    m = Metrics.create(Clock())
    m.render()
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        m.render()
    print(f"{(time.perf_counter() - t) / n * 1000:.3f}")
    """
)


def run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(out.stderr)
    return out.stdout.strip()


def main() -> None:
    single = run(f"FILL = {FILL!r}\n" + TIME, {})
    print(f"one process, filled registry: {single} ms per render")
    with tempfile.TemporaryDirectory() as path:
        env = {"PROMETHEUS_MULTIPROC_DIR": path}
        for _ in range(2):
            run(FILL, env)
        multi = run("FILL = ''\n" + TIME, env)
        print(f"2 workers' files (plus the scraper's own): {multi} ms per render")


if __name__ == "__main__":
    main()
