"""Launching: the twistd plugin, port 0, bad config, SIGTERM, the console script."""

from __future__ import annotations

import json
import os
import re
import signal

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import tap
from openclaw_twisted.config import ConfigError

from .support import child_env, http_client, spawn, twistd_args

LISTENING = re.compile(rb"openclaw gateway listening on http://([\d.]+):(\d+)")


class PluginTests(SynchronousTestCase):
    def test_plugin_is_discoverable(self) -> None:
        import twisted.plugins

        names = {p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("openclaw", names)


class ResolveTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config, endpoint = tap.resolve({}, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.assertEqual(endpoint, "tcp:18789:interface=127.0.0.1:backlog=1024")
        token = config.gateway.auth.token
        assert token is not None
        self.assertRegex(token, r"^[0-9a-f]{48}$")

    def test_port_and_bind_options(self) -> None:
        env = {"OPENCLAW_STATE_DIR": self.mktemp(), "OPENCLAW_GATEWAY_TOKEN": "t"}
        _, endpoint = tap.resolve({"port": "1234", "bind": "lan"}, env)
        self.assertEqual(endpoint, "tcp:1234:interface=0.0.0.0:backlog=1024")
        _, endpoint = tap.resolve({"port": "tcp:0:interface=127.0.0.1"}, env)
        self.assertEqual(endpoint, "tcp:0:interface=127.0.0.1:backlog=1024")

    def test_token_option_wins(self) -> None:
        env = {"OPENCLAW_STATE_DIR": self.mktemp(), "OPENCLAW_GATEWAY_TOKEN": "env"}
        config, _ = tap.resolve({"token": "cli"}, env)
        self.assertEqual(config.gateway.auth.token, "cli")

    def test_no_auth_refused_off_loopback(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"gateway": {"auth": {"mode": "none"}}}, f)
        tap.resolve({"config": path}, {})  # loopback: fine
        with self.assertRaises(ConfigError) as e:
            tap.resolve({"config": path, "bind": "lan"}, {})
        self.assertIn("gateway.auth.mode", str(e.exception))


class ProcessTests(TestCase):
    timeout = 30

    def _state(self) -> str:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        return d

    async def test_twistd_port_zero_logs_real_port_and_stops_on_sigterm(self) -> None:
        state = self._state()
        proc = spawn(self, twistd_args("--port", "tcp:0:interface=127.0.0.1"), child_env(state))
        line = await proc.line_with(b"openclaw gateway listening on")
        m = LISTENING.search(line)
        assert m is not None, line
        port = int(m.group(2))
        self.assertNotEqual(port, 0)
        response = await http_client(self).get(f"http://127.0.0.1:{port}/healthz")
        self.assertEqual(json.loads(await response.content()), {"ok": True, "status": "live"})
        proc.terminate()
        await proc.ended
        # twistd re-raises the signal that stopped it, after a clean shutdown.
        self.assertEqual(proc.signal, signal.SIGTERM)
        self.assertIn(b"openclaw gateway stopped", proc.out)

    async def test_bad_config_exits_with_one_line(self) -> None:
        state = self._state()
        path = os.path.join(state, "bad.json")
        with open(path, "w") as f:
            f.write('{gateway: {port: "abc"}}')
        state_env = child_env(state)
        cli = spawn(self, ["-m", "openclaw_twisted.cli", "gateway", "--config", path], state_env)
        proc = spawn(self, twistd_args("--config", path), state_env)
        # twistd reports a bad config as a usage error: its usage, then the one line.
        self.assertEqual(await proc.ended, 1)
        out = proc.out.decode()
        self.assertTrue(out.startswith("Usage: twistd [options]"), out)
        self.assertEqual(
            out.strip().splitlines()[-1].split(": ", 1)[1],
            'config error: gateway.port: expected a port number from 0 to 65535, got "abc"',
        )
        self.assertNotIn("Traceback", out + proc.err.decode())
        # The console script: only the line, exit 2 (the CLI's exit-code table).
        self.assertEqual(await cli.ended, 2)
        self.assertEqual(
            cli.err.decode(),
            "openclaw-twisted gateway: config error: gateway.port: expected a port number "
            'from 0 to 65535, got "abc"\n',
        )
        self.assertEqual(cli.out, b"")

    async def test_openclaw_keys_we_do_not_serve_start_fine(self) -> None:
        state = self._state()
        with open(os.path.join(state, "openclaw.json"), "w") as f:
            f.write("""{
              // a real user's file carries much more than we serve
              meta: {lastTouchedVersion: "2026.9.1"},
              channels: {telegram: {enabled: true, botToken: "x"}},
              plugins: {entries: {}},
              gateway: {mode: "local", port: 0, controlUi: {enabled: true},
                        auth: {mode: "token", token: "abc"}},
              agents: {defaults: {workspace: "~/w", compaction: {mode: "safeguard"}}},
              tools: {profile: "coding"},
            }""")
        proc = spawn(self, ["-m", "openclaw_twisted.cli", "gateway"], child_env(state))
        line = await proc.line_with(b"openclaw gateway listening on")
        self.assertIsNotNone(LISTENING.search(line))
        ignored = await proc.line_with(b"ignoring config keys")
        for key in (b"channels", b"plugins", b"gateway.controlUi"):
            self.assertIn(key, ignored)
        self.assertNotIn(b"tools", ignored)  # served: the agent's own tools
        self.assertNotIn(b"abc", proc.out)  # the token is never logged
