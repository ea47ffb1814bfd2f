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
        cluster = {"8"} if shutil.which("redis-server") else set()
        self.assertEqual(scenarios, {"1", "2", "3", "4", "5", "6", "7", *cluster})
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
