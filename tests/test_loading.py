"""Loading: names, devices, dtypes, and one clear sentence for every failure."""

from __future__ import annotations

import http.server
import json
import logging
import sys
import textwrap
import threading

import pytest
import torch

from janus_demo import JanusEngine, LoadError, load_engine
from janus_demo.loading import (
    JANUS_PRO_1B,
    JANUS_PRO_7B,
    canonical_name,
    model_for,
    pick_device,
    pick_precision,
)
from janus_demo.presets import CHAT_TEMPLATE


def test_tiny_random_loads_through_from_pretrained(engine):
    assert isinstance(engine, JanusEngine)
    assert engine.name == "random:tiny"
    folder = engine.model.name_or_path
    assert "tiny-" in folder  # the cached checkpoint folder, read back by from_pretrained
    assert type(engine.model).__name__ == "JanusForConditionalGeneration"
    assert type(engine.processor).__name__ == "JanusProcessor"
    assert engine.processor.chat_template == CHAT_TEMPLATE
    assert engine.model.generation_config.generation_kwargs == {"boi_token_id": engine.generator.boi_id}
    assert not any(p.requires_grad for p in engine.model.parameters())


def test_original_ids_map_to_converted_checkpoints(caplog):
    with caplog.at_level(logging.INFO, logger="janus_demo"):
        assert canonical_name("deepseek-ai/Janus-Pro-7B") == JANUS_PRO_7B
        assert canonical_name("deepseek-ai/Janus-Pro-1B") == JANUS_PRO_1B
    assert "original-format" in caplog.text and JANUS_PRO_7B in caplog.text
    assert canonical_name("tiny-random") == "random:tiny"
    assert canonical_name("someone/fine-tune") == "someone/fine-tune"


@pytest.mark.parametrize(
    ("free_gib", "expected"),
    [(None, JANUS_PRO_1B), (8, JANUS_PRO_1B), (19.9, JANUS_PRO_1B), (20, JANUS_PRO_7B), (79, JANUS_PRO_7B)],
)
def test_default_model_depends_on_free_gpu_memory(free_gib, expected):
    name, reason = model_for(None if free_gib is None else int(free_gib * 2**30))
    assert name == expected
    assert reason  # logged next to the choice


def test_default_on_cpu_is_1b_and_logged(caplog):
    from janus_demo.loading import default_model

    with caplog.at_level(logging.INFO, logger="janus_demo"):
        assert default_model(torch.device("cpu")) == JANUS_PRO_1B
    assert "no GPU" in caplog.text


def test_device_and_dtype_choice_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on the test machines, also on a GPU host
    assert pick_device(None) == torch.device("cpu")
    auto = pick_precision(torch.device("cpu"))
    assert (auto.llm, auto.vision, auto.vq) == (torch.float32, torch.float32, torch.float32)
    bf16 = pick_precision(torch.device("cpu"), "bf16")
    assert (bf16.llm, bf16.vision, bf16.vq) == (torch.bfloat16, torch.float32, torch.float32)
    with pytest.raises(LoadError, match="no GPU is visible"):
        pick_device("cuda")
    with pytest.raises(LoadError, match="not supported|Unknown device"):
        pick_device("tpu")
    with pytest.raises(LoadError, match="Unknown dtype"):
        pick_precision(torch.device("cpu"), "int3")


def test_bf16_llm_keeps_vision_and_vq_in_fp32():
    engine = load_engine("tiny-random", device="cpu", dtype="bf16")
    inner = engine.model.model
    assert inner.language_model.dtype == torch.bfloat16
    assert inner.generation_head.proj_out.weight.dtype == torch.bfloat16
    assert inner.vision_model.dtype == torch.float32 and inner.vqmodel.dtype == torch.float32
    result = engine.generate_images("a cat", num_images=1, seed=1)
    assert result.images[0].size == (384, 384)
    assert "".join(engine.chat([{"role": "user", "content": "hi"}], max_new_tokens=3))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "no config.json"),
        ({"model_type": "llama"}, "not Janus"),
        ({"model_type": "multi_modality"}, "original-format"),
        ("{not json", "not valid JSON"),
    ],
)
def test_folders_that_are_not_janus_checkpoints(tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(LoadError, match=message):
        load_engine(str(tmp_path), device="cpu")


def test_missing_paths_and_files(tmp_path):
    with pytest.raises(LoadError, match="no folder"):
        load_engine(str(tmp_path / "nope"), device="cpu")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LoadError, match="is a file"):
        load_engine(str(tmp_path / "model.safetensors"), device="cpu")
    with pytest.raises(LoadError, match="Unknown random preset"):
        load_engine("random:huge", device="cpu")


@pytest.mark.parametrize("damage", ["no weights", "truncated weights", "no tokenizer"])
def test_incomplete_checkpoints(engine, tmp_path, damage):
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.copytree(engine.model.name_or_path, folder)
    weights = folder / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    with pytest.raises(LoadError, match="is an incomplete or damaged Janus checkpoint"):
        load_engine(str(folder), device="cpu")


class FakeHub:
    """A loopback stand-in for huggingface.co that answers every request with one error."""

    def __init__(self, status: int, error_code: str | None) -> None:
        hub = self
        self.paths: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.paths.append(self.path)
                self.send_response(status)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": "fake hub"}')

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_env(tmp_path):
    """Environment for a CLI run whose Hub is `hub` and whose HF cache is empty."""
    hubs: list[FakeHub] = []

    def make(status: int = 404, error_code: str | None = "RepoNotFound"):
        hub = FakeHub(status, error_code)
        hubs.append(hub)
        return hub, {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}

    yield make
    for hub in hubs:
        hub.close()


def assert_one_sentence_error(run, fragment: str) -> None:
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], run.stderr


def test_unknown_hub_id(cli, hub_env, tmp_path):
    hub, env = hub_env(404, "RepoNotFound")
    run = cli("ask", str(tmp_path / "x.png"), "q", "--model", "nobody/no-such-model", env=env)
    assert_one_sentence_error(run, "There is no model 'nobody/no-such-model' on the Hugging Face Hub")
    assert any("nobody/no-such-model" in p for p in hub.paths)


def test_original_id_is_fetched_as_the_converted_one(cli, hub_env, tmp_path):
    hub, env = hub_env(404, "RepoNotFound")
    run = cli("ask", str(tmp_path / "x.png"), "q", "--model", "deepseek-ai/Janus-Pro-1B", env=env)
    assert "loading its converted twin deepseek-community/Janus-Pro-1B" in run.stderr
    assert any("deepseek-community/Janus-Pro-1B" in p for p in hub.paths)
    assert not any("deepseek-ai" in p for p in hub.paths)


def test_hub_server_error(cli, hub_env, tmp_path):
    _, env = hub_env(503, None)
    run = cli("ask", str(tmp_path / "x.png"), "q", "--model", "deepseek-community/Janus-Pro-1B", env=env)
    assert_one_sentence_error(run, "could not serve deepseek-community/Janus-Pro-1B right now (503)")


def test_no_network(cli, tmp_path):
    closed_port = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    run = cli("ask", str(tmp_path / "x.png"), "q", "--model", "deepseek-community/Janus-Pro-1B", env=closed_port)
    assert_one_sentence_error(run, "no network connection to the Hugging Face Hub")
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = cli("generate", "a cat", "--model", "deepseek-community/Janus-Pro-7B", env=offline)
    assert_one_sentence_error(run, "no network connection")


def test_out_of_memory_while_loading(tmp_path):
    """A real allocation failure: the address space is capped just above what is in use."""
    import subprocess

    script = textwrap.dedent(
        """
        import resource, sys
        import torch, janus_demo
        from janus_demo import LoadError, load_engine
        used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + 2 * 2**30, resource.RLIM_INFINITY))
        try:
            load_engine("random:janus-pro-1b", device="cpu")  # ~7.5 GB in fp32
        except LoadError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]
    assert run.stdout.strip() == (
        "Not enough memory to load random:janus-pro-1b on cpu; "
        "use deepseek-community/Janus-Pro-1B or a machine with more RAM."
    )


def test_zerogpu_defaults_without_touching_cuda(monkeypatch, caplog):
    """On ZeroGPU the web process must not initialise CUDA: no memory query, bf16, the 7B model."""
    from janus_demo.loading import default_model

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: pytest.fail("queried CUDA memory"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: pytest.fail("queried CUDA"))
    with caplog.at_level(logging.INFO, logger="janus_demo"):
        assert default_model(torch.device("cuda")) == JANUS_PRO_7B
    assert pick_precision(torch.device("cuda")).llm == torch.bfloat16
