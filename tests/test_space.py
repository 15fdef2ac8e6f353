"""Ready for a Hugging Face Space: ZeroGPU wiring, safe launch defaults, the README's front matter."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from janus_demo.chat import ChatSettings
from janus_demo.generation import ImageRequest
from janus_demo.web import gpu_tasks

ROOT = Path(__file__).resolve().parents[1]


def test_app_imports_spaces_before_anything_else():
    tree = ast.parse((ROOT / "app.py").read_text())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert isinstance(imports[0], ast.Import) and imports[0].names[0].name == "spaces"


def test_gpu_durations_follow_the_request():
    small, large = ImageRequest("x", num_images=1), ImageRequest("x", num_images=16)
    assert 0 < gpu_tasks.image_seconds(small, 900) < gpu_tasks.image_seconds(large, 900) <= gpu_tasks.MAX_SECONDS
    assert gpu_tasks.image_seconds(large, 30) == 30  # never more than the app's time limit
    short, long = ChatSettings(max_new_tokens=32), ChatSettings(max_new_tokens=1024)
    assert 0 < gpu_tasks.answer_seconds([], short, 900) < gpu_tasks.answer_seconds([], long, 900)
    assert gpu_tasks.answer_seconds([], long, 900) <= gpu_tasks.MAX_SECONDS
    # ... and the images in the conversation, wherever they are (each one costs encoding and prefill).
    image = {"type": "image", "image": None}
    text_only = [{"role": "user", "content": "Hi"}]
    two_images = [{"role": "user", "content": [image, {"type": "text", "text": "Hi"}]},
                  {"role": "assistant", "content": "Hello"}, {"role": "user", "content": [image]}]
    assert gpu_tasks.answer_seconds(two_images, short, 900) - gpu_tasks.answer_seconds(text_only, short, 900) == (
        2 * gpu_tasks.ANSWER_SECONDS_PER_IMAGE)


def test_gpu_functions_take_and_give_only_picklable_values(engine):
    """ZeroGPU pickles arguments and results between processes; the model never travels."""
    gpu_tasks.install(engine)
    request = ImageRequest("a cat", num_images=1, seed=1)
    assert pickle.loads(pickle.dumps(request)) == request
    batches = [pickle.loads(pickle.dumps(batch)) for batch in gpu_tasks.draw(request, 900)]
    assert batches[-1][-1].images[0].size == (384, 384)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))},
                                             {"type": "text", "text": "hi"}]}]
    assert len(pickle.dumps(messages)) < 10_000
    assert "".join(gpu_tasks.answer(pickle.loads(pickle.dumps(messages)), ChatSettings(max_new_tokens=4), 900))


def test_on_zerogpu_the_gpu_functions_are_wrapped_with_their_durations():
    """Runs spaces.GPU's real ZeroGPU branch with its worker machinery replaced by a recorder
    (the real one needs a CUDA build of torch and the Spaces scheduler)."""
    script = textwrap.dedent(
        """
        import sys, types
        import spaces
        from spaces.config import Config
        Config.zero_gpu = True
        seen = {}
        def record(task, duration, size):
            seen[task.__name__] = duration
            return task
        fake_wrappers = types.ModuleType("spaces.zero.wrappers")
        fake_wrappers.generator_function_wrapper = fake_wrappers.regular_function_wrapper = record
        sys.modules["spaces.zero.wrappers"] = fake_wrappers
        sys.modules["spaces.zero.client"] = types.ModuleType("spaces.zero.client")
        from janus_demo.web import gpu_tasks
        assert seen == {"draw": gpu_tasks.image_seconds, "answer": gpu_tasks.answer_seconds}, seen
        print("wrapped", sorted(seen))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "wrapped ['answer', 'draw']"


def test_launch_defaults_are_safe(monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        import app
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    assert args.max_images == 16 and args.queue_size > 0 and args.max_file_size
    for flag in ("--concurrency", "--queue-size", "--max-images", "--batch-users"):
        with pytest.raises(SystemExit):  # 0 would leave requests waiting forever
            app.parse_args([flag, "0"])
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what a Space sets
    monkeypatch.setenv("JANUS_MODEL", "deepseek-community/Janus-Pro-1B")
    args = app.parse_args([])
    assert args.host == "0.0.0.0" and args.model == "deepseek-community/Janus-Pro-1B"


def test_readme_starts_with_space_front_matter():
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\n")
    front = readme.split("---\n")[1]
    for line in ("sdk: gradio", "app_file: app.py", "deepseek-community/Janus-Pro-7B"):
        assert line in front
