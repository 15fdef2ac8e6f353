"""The load test script, small, against the running app: every client gets its own complete result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_several_clients_at_once_each_get_their_own_result(app, artifacts):
    figures = artifacts / "load-test.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/load_test.py", "--url", app.url, "--clients", "4", "--requests", "3",
         "--max-seconds", "300", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 12 results verified" in run.stdout
    data = json.loads(figures.read_text())
    assert data["requests"] == 12 and not data["failures"]
    assert data["/generate"]["count"] == 8 and data["/understand"]["count"] == 4


def test_load_test_refuses_other_hosts():
    run = subprocess.run([sys.executable, "benchmarks/load_test.py", "--url", "http://10.0.0.5:7860/"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "only target this machine" in run.stderr
