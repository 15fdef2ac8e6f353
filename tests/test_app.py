"""End to end through `python app.py --model tiny-random`, driven by gradio_client."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from janus_demo.images import read_png_params

CHART = str(Path(__file__).resolve().parents[1] / "examples" / "chart.png")


@pytest.fixture(scope="module")
def client(app):
    c = Client(app.url, verbose=False)
    yield c
    c.close()


def listening_addresses(port: int) -> set[str]:
    """Local addresses of this machine's TCP sockets listening on `port` (Linux's /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_serves_on_loopback_without_a_share_link(app):
    assert f"Running on local URL:  http://127.0.0.1:{app.port}" in app.log
    assert "gradio.live" not in app.log
    # Bound to 127.0.0.1 only (0100007F, little-endian hex): no other interface can reach it.
    assert listening_addresses(app.port) == {"0100007F"}


def test_only_the_two_named_endpoints_are_public(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/generate", "/understand"}
    assert not api["unnamed_endpoints"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert params == ["prompt", "num_images", "cfg_scale", "temperature", "seed"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/understand"]["parameters"]]
    assert params == ["image", "question", "temperature", "top_p", "max_new_tokens", "seed"]


def test_generate_returns_pngs_with_parameters_and_the_seed(client):
    images, seed = client.predict(prompt="a red cat", num_images=2, cfg_scale=5, temperature=1, seed=42,
                                  api_name="/generate")
    assert seed == 42 and len(images) == 2
    assert [item["caption"] for item in images] == ["seed 42 · #1", "seed 42 · #2"]
    with Image.open(images[0]["image"]) as first:
        assert first.format == "PNG" and first.size == (384, 384)
    params = read_png_params(images[1]["image"])
    assert params["prompt"] == "a red cat" and params["seed"] == 42 and params["image_index"] == 1
    assert params["model"] == "random:tiny"


def test_generate_is_reproducible_and_reports_random_seeds(client, gallery_pixels):
    first = client.predict(prompt="a boat", num_images=2, cfg_scale=4.5, temperature=0.8, seed=7, api_name="/generate")
    again = client.predict(prompt="a boat", num_images=2, cfg_scale=4.5, temperature=0.8, seed=7, api_name="/generate")
    assert gallery_pixels(first[0]) == gallery_pixels(again[0])
    random_images, random_seed = client.predict(prompt="a boat", num_images=1, cfg_scale=4.5, temperature=0.8,
                                                seed=None, api_name="/generate")
    assert isinstance(random_seed, int) and random_seed >= 0
    replay = client.predict(prompt="a boat", num_images=1, cfg_scale=4.5, temperature=0.8, seed=random_seed,
                            api_name="/generate")
    assert gallery_pixels(replay[0]) == gallery_pixels(random_images)


def test_understand_streams_the_answer(client, engine):
    job = client.submit(image=handle_file(CHART), question="Which month sold most?", temperature=0, top_p=0.95,
                        max_new_tokens=24, seed=None, api_name="/understand")
    answer = job.result()
    updates = [u for u in job.outputs() if u]
    assert len(updates) >= 5, "the answer arrives in pieces"
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))
    assert updates[-1] == answer
    # Same answer as the engine itself on the same image and question.
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(CHART)},
                                             {"type": "text", "text": "Which month sold most?"}]}]
    assert answer == "".join(engine.chat(messages, temperature=0, max_new_tokens=24))


def test_understand_seed_reproducibility(client):
    ask = dict(image=handle_file(CHART), question="Describe it.", temperature=0.9, top_p=0.95, max_new_tokens=16,
               api_name="/understand")
    first = client.predict(seed=5, **ask)
    assert first == client.predict(seed=5, **ask)
    assert first != client.predict(seed=6, **ask)
