"""Shared fixtures: every test runs on the offline tiny-random model, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def pytest_configure(config) -> None:
    # A fresh cache per session, so the offline build itself is exercised on every run.
    os.environ["JANUS_DEMO_CACHE"] = tempfile.mkdtemp(prefix="janus-demo-cache-")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="session")
def engine():
    from janus_demo import load_engine

    return load_engine("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def cli():
    """Run `python -m janus_demo ...` from the repository root, as a user would."""

    def run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "janus_demo", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
