"""Shared fixtures: every test runs on the offline tiny-random model, on the CPU."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
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
def lively_engine():
    """The `lively` preset: tiny-random with its LLM, aligner and head weights scaled 8x. Its
    greedy image tokens wander over hundreds of codes (the plain tiny model repeats a handful),
    so equality with a reference decoder is evidence, not a coincidence of flat logits."""
    from janus_demo import load_engine

    return load_engine("random:lively", device="cpu")


@pytest.fixture
def loop_rows(monkeypatch) -> list[int]:
    """The number of rows (conditional + unconditional) of every image decoding loop started."""
    from janus_demo import token_loop

    rows: list[int] = []
    original = token_loop.TokenLoop.__init__

    def init(self, model, ids, *args, **kwargs):
        rows.append(ids.shape[0])
        original(self, model, ids, *args, **kwargs)

    monkeypatch.setattr(token_loop.TokenLoop, "__init__", init)
    return rows


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def gallery_pixels():
    """Raw pixels of the images a /generate call returned, to compare two runs exactly."""
    from PIL import Image

    def pixels(images) -> list[bytes]:
        out = []
        for item in images:
            with Image.open(item["image"]) as image:
                out.append(image.tobytes())
        return out

    return pixels


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningApp:
    """`python app.py ...` in a subprocess, as a user starts it; `url` once it serves."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="janus-app-", suffix=".log")[1])
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--model", "tiny-random", "--port", str(self.port), *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 120
        while "Running on local URL" not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"app did not start:\n{self.log}")
            time.sleep(0.2)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def run_app():
    """Start another `python app.py` (with its own flags or environment); stop it yourself."""
    return RunningApp


@pytest.fixture(scope="session")
def serve():
    """`app.create_app` launched in this process, so tests can inject faults; yields (demo, client)."""

    @contextlib.contextmanager
    def served(*flags: str):
        from gradio_client import Client

        sys.path.insert(0, str(ROOT))
        try:
            import app
        finally:
            sys.path.remove(str(ROOT))
        args = app.parse_args(["--model", "tiny-random", *flags])
        demo = app.create_app(args)
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                    max_file_size=args.max_file_size)
        # A long HTTP timeout: on a loaded machine a /cancel (which waits for the model to stop) can take seconds.
        client = Client(demo.local_url, verbose=False, httpx_kwargs={"timeout": 120})
        try:
            yield demo, client
        finally:
            client.close()
            demo.close()

    return served


@pytest.fixture(scope="session")
def app():
    """One running app (tiny-random, CPU) shared by the end-to-end tests."""
    running = RunningApp()
    yield running
    running.stop()


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


# The README's Stop bound, in steps: the server hears of a Stop within one heartbeat (0.1 s), the
# step under way finishes and no other begins; with steps slowed to STOP_STEP_S, at most
# STEPS_AFTER_STOP steps may begin after the click (one more leaves room for the click's trip).
STOP_STEP_S = 0.3
STEPS_AFTER_STOP = 2


class StepCounter:
    """Counts the language model's calls of `engine` (one per decoding step), makes each last at
    least `step_s`, and sets `reached` at call `signal_at`: tests press Stop from that event, not
    after a sleep, and count in steps how far the model went on."""

    def __init__(self, engine, monkeypatch, *, signal_at: int, step_s: float = 0.0) -> None:
        import threading

        language_model = engine.model.model.language_model
        original = language_model.forward
        self.count = 0
        self.reached = threading.Event()

        def counted(*args, **kwargs):
            self.count += 1
            if self.count == signal_at:
                self.reached.set()
            time.sleep(step_s)
            return original(*args, **kwargs)

        monkeypatch.setattr(language_model, "forward", counted)

    def wait_until_idle(self, thread_name: str, within: float = 30.0) -> None:
        """Wait until no thread named `thread_name` (the model's worker) is left, at most `within` s."""
        import threading

        deadline = time.monotonic() + within
        while any(t.name == thread_name for t in threading.enumerate()):
            assert time.monotonic() < deadline, f"{thread_name} still running after {within} s"
            time.sleep(0.05)


@pytest.fixture
def step_counter(monkeypatch):
    """`step_counter(engine, signal_at=N, step_s=S)`: a StepCounter on that engine's model."""
    return lambda engine, **kwargs: StepCounter(engine, monkeypatch, **kwargs)
