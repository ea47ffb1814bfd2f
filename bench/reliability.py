"""The longer reliability runs: hypothesis fuzzing with many examples, schemathesis with many.

    python -m bench.reliability [--examples 2000] [--schemathesis 500]

Runs the fuzz properties of tests/hardening with ``--examples`` random examples each (not the
CI's derandomized few), then starts a gateway (the built-in echo model, a scratch state dir)
and runs schemathesis against it with ``--schemathesis`` examples per operation.  Prints the
figures the README's "Reliability" section quotes; exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "reliability-token"


def fuzz(examples: int) -> None:
    env = {**os.environ, "OPENCLAW_FUZZ_EXAMPLES": str(examples), "PYTHONPATH": REPO}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "twisted.trial", "tests.hardening.test_fuzz"],
            cwd=scratch,
            env=env,
        )
    took = time.monotonic() - started
    print(f"fuzz: 5 properties x {examples} examples in {took:.0f} s: exit {done.returncode}")
    if done.returncode:
        sys.exit(done.returncode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schemathesis(examples: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        with open(os.path.join(state, "openclaw.json"), "w") as f:
            json.dump(
                {
                    "gateway": {
                        "auth": {"mode": "token", "token": TOKEN},
                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
                    }
                },
                f,
            )
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")},
            "OPENCLAW_STATE_DIR": state,
            "HOME": state,
            "PYTHONPATH": REPO,
        }
        gateway = subprocess.Popen(
            [sys.executable, "-m", "openclaw_twisted.cli", "gateway", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert gateway.stdout is not None
            for line in gateway.stdout:
                if "listening on" in line:
                    break
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schemathesis.cli",
                    "run",
                    f"{url}/openapi.json",
                    "--url",
                    url,
                    "-H",
                    f"Authorization: Bearer {TOKEN}",
                    "--max-examples",
                    str(examples),
                    "--no-color",
                ],
                cwd=state,
                capture_output=True,
                text=True,
            )
            took = time.monotonic() - started
        finally:
            gateway.terminate()
            log = gateway.communicate(timeout=30)[0]
        cases = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
        summary = f"{cases.group(1)} cases, {cases.group(2)} passed" if cases else "?"
        print(f"schemathesis: {examples} examples/operation, {summary} in {took:.0f} s")
        tracebacks = log.count("Traceback")
        print(f"gateway log: {tracebacks} tracebacks")
        if done.returncode or tracebacks:
            print(done.stdout[-5000:])
            sys.exit(done.returncode or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--schemathesis", type=int, default=500)
    args = parser.parse_args()
    fuzz(args.examples)
    schemathesis(args.schemathesis)


if __name__ == "__main__":
    main()
