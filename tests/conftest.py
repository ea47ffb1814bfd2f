"""pytest only: run from a scratch directory, as trial does (``mktemp`` paths are relative)."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.chdir(tempfile.mkdtemp(prefix="openclaw-twisted-tests-"))
