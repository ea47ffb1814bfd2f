"""The benchmark harness runs end to end in its seconds-long smoke mode and reports figures."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from .support import REPO


class SmokeTests(SynchronousTestCase):
    def test_smoke_run_reports_every_scenario(self) -> None:
        out = os.path.abspath(self.mktemp())
        done = subprocess.run(
            [sys.executable, "-m", "bench", "--smoke", "--python-load", "--out", out],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
        with open(os.path.join(out, "results.json")) as f:
            rows = json.load(f)["rows"]
        scenarios = {m.group(1) for r in rows if (m := re.match(r"(\d)\.", r[0]))}
        cluster = shutil.which("redis-server") is not None
        self.assertEqual(scenarios, {"1", "2", "3", "4", "5", "6", "7", "8"})
        for figure, _target, measured, _detail, _ok in rows:
            self.assertRegex(measured, r"\d", figure)
        # Correctness holds even in a smoke run: every stream arrives complete and in order,
        # and the slow reader gets the whole answer.
        by_figure = {r[0].split(" (")[0].split(",")[0]: r for r in rows}
        self.assertTrue(by_figure["4. streams complete"][4], by_figure["4. streams complete"])
        self.assertTrue(
            by_figure["7. Responses streams complete"][4],
            by_figure["7. Responses streams complete"],
        )
        slow = next(r for r in rows if r[0].startswith("5."))
        self.assertNotIn("INCOMPLETE", slow[3])
        # Scenario 8 puts 2, 3 and 4 against every topology side by side: one gateway, one
        # with two workers, and two on one Redis (when there is a redis-server to start).
        topologies = {"(a)", "(b)"} | ({"(c)"} if cluster else set())
        covered = {
            (m.group(1), m.group(2))
            for r in rows
            if (m := re.match(r"8\. (\d)\. .*: (\([abc]\)) ", r[0]))
        }
        self.assertEqual(covered, {(s, t) for s in "234" for t in topologies})
        for figure, _target, _measured, _detail, ok in rows:
            if figure.startswith("8. 4. streams complete"):
                self.assertTrue(ok, figure)

    def test_upstream_mode_reports_both_ways(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "bench.upstream_mode", "--rounds", "1", "-n", "5"],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
        for way in ("streamed", "whole"):
            self.assertRegex(done.stdout, rf"{way} *: +\d+ us CPU a request; latency p50 [\d.]+ ms")


# A child that burns 0.3 s of CPU (/proc counts whole ticks: asserted as 0.25), says so, and
# exits when it reads a byte; its parent (the "supervisor") waits for it, says so, and exits
# when it reads a byte too.
_BURN = (
    "import os, time\n"
    "while time.process_time() < 0.3: pass\n"
    "print('burnt', flush=True)\n"
    "os.read(0, 1)\n"
)
_SUPERVISE = (
    "import os, subprocess, sys\n"
    f"subprocess.Popen([sys.executable, '-c', {_BURN!r}]).wait()\n"
    "print('reaped', flush=True)\n"
    "os.read(0, 1)\n"
)


class ProcessTreeTests(SynchronousTestCase):
    """A supervisor's figures include its workers': live ones, and those it has reaped."""

    def test_cpu_and_rss_count_the_children(self) -> None:
        sys.path.insert(0, REPO)
        self.addCleanup(sys.path.remove, REPO)
        from bench.run import Watched, descendants

        parent = subprocess.Popen(
            [sys.executable, "-c", _SUPERVISE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.addCleanup(parent.wait)
        self.addCleanup(parent.kill)
        assert parent.stdin is not None and parent.stdout is not None
        watched = Watched("supervisor", parent.pid)
        self.assertEqual(parent.stdout.readline(), b"burnt\n")
        (child,) = descendants(parent.pid)
        self.assertEqual(watched.pids(), [parent.pid, child])
        self.assertGreaterEqual(watched.cpu(), 0.25)
        # The parent only waits: the CPU is the child's.
        self.assertLess(watched.cpu_by_pid()[parent.pid], 0.25)
        rss = watched.status("VmRSS")
        parent.stdin.write(b"x")  # the child exits, the parent reaps it
        parent.stdin.flush()
        self.assertEqual(parent.stdout.readline(), b"reaped\n")
        self.assertEqual(descendants(parent.pid), [])
        self.assertGreaterEqual(watched.cpu(), 0.25)  # now in the parent's children's time
        self.assertLess(watched.status("VmRSS"), rss)  # the child's RSS was in the sum
