"""End to end through `python app.py --model tiny-random`, driven by gradio_client."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
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


def test_only_the_named_endpoints_are_public(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/generate", "/understand", "/compare", "/generate_image",
                                           "/multimodal_understanding"}
    assert not api["unnamed_endpoints"]

    def signature(name):
        parameters = api["named_endpoints"][name]["parameters"]
        return [(p["parameter_name"], p["parameter_default"] if p["parameter_has_default"] else "required")
                for p in parameters]

    assert signature("/generate") == [("prompt", "required"), ("num_images", "required"), ("cfg_scale", "required"),
                                      ("temperature", "required"), ("seed", None), ("negative_prompt", None)]
    assert signature("/compare") == [("prompt", "required"), ("x_axis", "required"), ("x_values", "required"),
                                     ("y_axis", None), ("y_values", None), ("cfg_scale", 5.0),
                                     ("temperature", 1.0), ("seed", None), ("negative_prompt", None)]
    assert [name for name, _ in signature("/understand")] == [
        "image", "question", "temperature", "top_p", "max_new_tokens", "seed"]
    # The official Space's: names, order and defaults (demo/app_januspro.py), one output each.
    assert signature("/generate_image") == [("prompt", "required"), ("seed", 1234), ("guidance", 5),
                                            ("t2i_temperature", 1.0)]
    assert signature("/multimodal_understanding") == [("image", "required"), ("question", "required"), ("seed", 42),
                                                      ("top_p", 0.95), ("temperature", 0.1)]
    for name in ("/generate_image", "/multimodal_understanding"):
        assert len(api["named_endpoints"][name]["returns"]) == 1


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


def test_generate_takes_a_negative_prompt_last(client, gallery_pixels):
    ask = dict(prompt="a boat", num_images=1, cfg_scale=5, temperature=1, seed=3, api_name="/generate")
    plain, _ = client.predict(**ask)
    avoided, _ = client.predict(**ask, negative_prompt="fog, rain")
    assert read_png_params(avoided[0]["image"])["negative_prompt"] == "fog, rain"
    assert "negative_prompt" not in read_png_params(plain[0]["image"])
    assert gallery_pixels(avoided) != gallery_pixels(plain)
    positional, _ = client.predict("a boat", 1, 5, 1, 3, "fog, rain", api_name="/generate")
    assert gallery_pixels(positional) == gallery_pixels(avoided)


# ----- the official Space's API, called exactly as scripts written for it call it -------------
def test_generate_image_as_the_official_space(client, gallery_pixels):
    result = client.predict(prompt="a red cat", seed=1234, guidance=5, t2i_temperature=1.0,
                            api_name="/generate_image")
    assert isinstance(result, list) and len(result) == 5
    with Image.open(result[0]["image"]) as first:
        assert first.format == "PNG" and first.size == (768, 768)
    params = read_png_params(result[4]["image"])
    assert params["seed"] == 1234 and params["num_images"] == 5 and params["image_index"] == 4
    assert params["model_output_px"] == 384 and params["display_scale"] == 2
    assert params["display_resample"] == "LANCZOS"
    positional = client.predict("a red cat", 1234, 5, 1.0, api_name="/generate_image")
    assert gallery_pixels(positional) == gallery_pixels(result)  # reproducible per seed
    assert len(set(gallery_pixels(result))) == 5  # five different images (seed + k each)


def test_multimodal_understanding_as_the_official_space(client, engine):
    answer = client.predict(image=handle_file(CHART), question="Which month sold most?", seed=42, top_p=0.95,
                            temperature=0.1, api_name="/multimodal_understanding")
    assert isinstance(answer, str) and answer
    positional = client.predict(handle_file(CHART), "Which month sold most?", 42, 0.95, 0.1,
                                api_name="/multimodal_understanding")
    assert positional == answer
    assert client.predict(image=handle_file(CHART), question="Which month sold most?",
                          api_name="/multimodal_understanding") == answer  # the defaults are seed 42, 0.95, 0.1
    greedy = client.predict(image=handle_file(CHART), question="Which month sold most?", seed=42, top_p=0.95,
                            temperature=0, api_name="/multimodal_understanding")
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(CHART)},
                                             {"type": "text", "text": "Which month sold most?"}]}]
    assert greedy == "".join(engine.chat(messages, temperature=0, max_new_tokens=512))  # 512 new tokens at most


def test_official_endpoints_refuse_bad_input_in_our_words(client):
    with pytest.raises(AppError, match=r"^guidance must be a number from 1 to 10 \(got 50"):
        client.predict(prompt="a cat", guidance=50, api_name="/generate_image")
    with pytest.raises(AppError, match=r"^The prompt is empty"):
        client.predict(prompt="  ", api_name="/generate_image")
    with pytest.raises(AppError, match=r"^top_p must be a number above 0"):
        client.predict(image=handle_file(CHART), question="q", top_p=0, api_name="/multimodal_understanding")
    with pytest.raises(AppError, match=r"^Attach an image"):
        client.predict(image=None, question="q", api_name="/multimodal_understanding")


def test_compare_returns_the_labelled_grid_then_each_cell(client, engine):
    gallery, seed = client.predict(prompt="a red cat", x_axis="cfg_scale", x_values="1, 5", y_axis="temperature",
                                   y_values="0 1", seed=12, api_name="/compare")
    assert seed == 12 and len(gallery) == 1 + 4
    assert [item["caption"] for item in gallery] == [
        "2 by 2 grid", "CFG scale 1 · Temperature 0", "CFG scale 5 · Temperature 0", "CFG scale 1 · Temperature 1",
        "CFG scale 5 · Temperature 1"]
    with Image.open(gallery[0]["image"]) as grid:
        assert grid.width > 2 * 384 and grid.height > 2 * 384
    params = read_png_params(gallery[4]["image"])
    assert (params["prompt"], params["cfg_scale"], params["temperature"], params["seed"]) == ("a red cat", 5, 1, 12)
    alone = engine.generate_images("a red cat", num_images=1, seed=12, cfg_scale=5.0, temperature=1.0)
    with Image.open(gallery[4]["image"]) as cell:
        assert cell.tobytes() == alone.images[0].tobytes()  # the cell is the image drawn alone


def test_compare_refuses_a_grid_larger_than_a_request_before_any_work(client):
    with pytest.raises(AppError, match=r"^A 5 by 4 grid is 20 images, but this app draws at most 16 per request"):
        client.predict(prompt="a cat", x_axis="seed", x_values="1 2 3 4", y_axis="cfg_scale", y_values="1 2 3 4 5",
                       api_name="/compare")
    with pytest.raises(AppError, match=r"^CFG scale must be a number from 1 to 10 \(got 12"):
        client.predict(prompt="a cat", x_axis="cfg_scale", x_values="3, 12", y_axis="", y_values="",
                       api_name="/compare")
    with pytest.raises(AppError, match=r"^Choose two different axes"):
        client.predict(prompt="a cat", x_axis="seed", x_values="1", y_axis="seed", y_values="2", api_name="/compare")
