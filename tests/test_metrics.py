"""Metrics beyond the HTTP edge: config, Redis errors, and workers' values added up in a scrape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import parse_config
from openclaw_twisted.cluster import RedisUnavailable
from openclaw_twisted.config import ConfigError, MetricsConfig
from openclaw_twisted.metrics import (
    MULTIPROC_ENV,
    Metrics,
    prepare_multiprocess_dir,
    worker_exited,
)

from .redis_support import connect, start_redis

#: One worker process: counts a request, a run and an open stream, then exits (its values
#: stay in its files, as a live worker's would).
WORKER = textwrap.dedent(
    """
    import os
    from twisted.internet.task import Clock
    from openclaw_twisted.metrics import Metrics
    m = Metrics.create(Clock())
    m.request_done("chat_completions", 200)
    m.runs.labels("ok").inc()
    m.run_seconds.observe(0.3)
    m.stream_opened("sse")
    print(os.getpid())
    """
)
SCRAPE = textwrap.dedent(
    """
    from twisted.internet.task import Clock
    from openclaw_twisted.metrics import Metrics
    print(Metrics.create(Clock()).render().decode())
    """
)


class ConfigTests(SynchronousTestCase):
    def test_off_by_default_token_auth(self) -> None:
        config = parse_config({}, {})
        self.assertEqual(config.gateway.metrics, MetricsConfig(enabled=False, auth="token"))

    def test_keys(self) -> None:
        data = {"gateway": {"metrics": {"enabled": True, "auth": "none"}}}
        self.assertEqual(parse_config(data, {}).gateway.metrics, MetricsConfig(True, "none"))

    def test_an_unknown_auth_says_what_is_allowed(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config({"gateway": {"metrics": {"auth": "password"}}}, {})
        expected = 'gateway.metrics.auth: expected "token" or "none", got "password"'
        self.assertEqual(str(caught.exception), expected)


class RegistryTests(SynchronousTestCase):
    def test_two_gateways_in_one_process_count_apart(self) -> None:
        a, b = Metrics.create(Clock()), Metrics.create(Clock())
        a.request_done("health", 200)
        self.assertEqual(
            a.registry.get_sample_value(
                "openclaw_http_requests_total", {"route": "health", "status": "200"}
            ),
            1,
        )
        self.assertIsNone(
            b.registry.get_sample_value(
                "openclaw_http_requests_total", {"route": "health", "status": "200"}
            )
        )

    def test_an_injected_registry_is_used(self) -> None:
        registry = CollectorRegistry()
        Metrics.create(Clock(), registry).redis_error("timeout")
        self.assertEqual(
            registry.get_sample_value("openclaw_redis_errors_total", {"kind": "timeout"}), 1
        )

    def test_a_stream_closes_once(self) -> None:
        m = Metrics.create(Clock())
        close = m.stream_opened("websocket")
        close()
        close()
        self.assertEqual(
            m.registry.get_sample_value("openclaw_streams_open", {"kind": "websocket"}), 0
        )


class RedisErrorTests(TestCase):
    timeout = 30

    async def test_a_redis_that_is_down_counts_an_error(self) -> None:
        server = start_redis(self)
        client = await connect(self, server, clock=Clock())
        metrics = Metrics.create(Clock())
        client.on_error = metrics.redis_error
        server.kill()
        with self.assertRaises(RedisUnavailable):
            await client.execute("GET", "k")
        text = metrics.render().decode()
        values = {
            (s.name, s.labels.get("kind")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        errors = {k: v for (name, k), v in values.items() if name == "openclaw_redis_errors_total"}
        # Unreachable, or connection_lost when the command was sent before the loss was seen.
        self.assertLessEqual(set(errors), {"unreachable", "connection_lost"})
        self.assertEqual(sum(errors.values()), 1)


class MultiprocessTests(SynchronousTestCase):
    """``--workers N``: each worker writes its own files; a scrape of any one adds them up."""

    def python(self, code: str, env: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def scrape(self, env: dict[str, str]) -> dict[tuple[str, str], float]:
        text = self.python(SCRAPE, env)
        return {
            (s.name, json.dumps(s.labels, sort_keys=True)): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    def test_two_workers_are_added_up_and_a_dead_ones_streams_forgotten(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "counter_99999.db"), "wb") as stale:
            stale.write(b"values of an earlier run")
        env = prepare_multiprocess_dir(path)
        self.assertEqual(env, {MULTIPROC_ENV: path})
        self.assertEqual(os.listdir(path), [])  # an earlier run's values are not added in
        pids = [int(self.python(WORKER, env)) for _ in range(2)]
        s = self.scrape(env)
        requests = json.dumps({"route": "chat_completions", "status": "200"}, sort_keys=True)
        self.assertEqual(s[("openclaw_http_requests_total", requests)], 2)
        self.assertEqual(s[("openclaw_run_completed_total", '{"outcome": "ok"}')], 2)
        self.assertEqual(s[("openclaw_run_duration_seconds_count", "{}")], 2)
        self.assertEqual(s[("openclaw_streams_open", '{"kind": "sse"}')], 2)
        worker_exited(pids[0], path)
        s = self.scrape(env)
        self.assertEqual(s[("openclaw_streams_open", '{"kind": "sse"}')], 1)
        # What a dead worker counted stays counted: counters never go down.
        self.assertEqual(s[("openclaw_http_requests_total", requests)], 2)
