"""The architecture the file tree shows: the engine knows nothing of the web app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_engine_imports_without_gradio_or_spaces():
    """Every module outside janus_demo/web imports with gradio and spaces made unimportable,
    as on a GPU box that runs only the engine (benchmarks/gpu_check.py)."""
    modules = sorted(f"janus_demo.{path.stem}" for path in (ROOT / "janus_demo").glob("*.py"))
    assert len(modules) > 15 and "janus_demo.engine" in modules
    code = ("import importlib, sys; sys.modules.update(gradio=None, spaces=None); "
            f"[importlib.import_module(name) for name in {modules!r}]; "
            "print(sorted(name for name in sys.modules if name.startswith('janus_demo.web')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"  # nor does any of them reach into the web package


def test_the_web_package_has_a_module_per_tab_and_one_for_the_api():
    web = {path.stem for path in (ROOT / "janus_demo" / "web").glob("*.py")}
    assert {"chat", "draw", "compare", "api", "handoffs", "demo", "gpu_tasks"} <= web
    assert not (ROOT / "janus_demo" / "ui.py").exists() and not (ROOT / "janus_demo" / "handlers.py").exists()
