"""Back from one of our PNGs to the request that draws its image again, alone."""

from __future__ import annotations

import pytest
from PIL import Image

from janus_demo import ImageRequest, InputError
from janus_demo.images import save_png
from janus_demo.redraw import NOT_OURS, read_drawn_image


def saved(tmp_path, params: dict, name: str = "x.png"):
    return save_png(Image.new("RGB", (384, 384)), tmp_path / name, params)


def test_a_png_knows_its_batch_and_its_place_in_it(tmp_path):
    params = {"prompt": "a cat", "negative_prompt": "dogs", "num_images": 4, "cfg_scale": 3.5, "temperature": 0.7,
              "top_p": 0.9, "seed": 100, "model": "random:tiny", "image_index": 2}
    drawn = read_drawn_image(saved(tmp_path, params))
    assert drawn.request == ImageRequest("a cat", num_images=4, cfg_scale=3.5, temperature=0.7, top_p=0.9, seed=100,
                                         negative_prompt="dogs")
    assert (drawn.index, drawn.model, drawn.scale) == (2, "random:tiny", 1)
    assert drawn.alone() == ImageRequest("a cat", num_images=1, cfg_scale=3.5, temperature=0.7, top_p=0.9, seed=102,
                                         negative_prompt="dogs")
    drawn.check_model("random:tiny")
    with pytest.raises(InputError, match=r"^That image was drawn by random:tiny, but this runs random:1b; "):
        drawn.check_model("random:1b")


@pytest.mark.parametrize("params", [
    {},  # a PNG of someone else's
    {"prompt": "a cat", "seed": 1, "num_images": 2, "image_index": 0},  # no model
    {"prompt": "a cat", "num_images": 2, "image_index": 0, "model": "m"},  # no seed
    {"prompt": "a cat", "seed": 1, "num_images": 2, "image_index": 2, "model": "m"},  # index outside the batch
    {"prompt": "a cat", "seed": 1, "num_images": 2, "image_index": 0, "model": "m", "cfg_scale": "high"},
    {"prompt": "a cat", "seed": 1, "num_images": 2, "image_index": 0, "model": "m", "display_scale": 3},
])
def test_anything_else_is_refused_in_one_sentence(tmp_path, params):
    with pytest.raises(InputError) as refused:
        read_drawn_image(saved(tmp_path, params))
    assert str(refused.value) == NOT_OURS


def test_a_file_that_is_no_image_gets_the_image_sentence(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InputError, match="not an image Pillow can read"):
        read_drawn_image(tmp_path / "notes.png")
