"""Whatever users upload becomes an upright 8-bit RGB image, or a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from janus_demo import InputError
from janus_demo.images import NEUTRAL_GRAY, open_image, read_png_params, save_png, to_rgb


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    upright = to_rgb(open_image(encode(wide, "JPEG", exif=exif, quality=95)))
    assert upright.size == (20, 60)
    r, g, b = upright.getpixel((10, 3))  # the blue band is now at the top
    assert b > 200 and r < 60


def test_transparency_becomes_neutral_gray():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    half = Image.new("RGBA", (8, 8), (255, 255, 255, 128))
    assert to_rgb(clear).getpixel((0, 0)) == NEUTRAL_GRAY
    assert to_rgb(half).getpixel((0, 0)) == (191, 191, 191)
    assert to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == NEUTRAL_GRAY


def test_palette_with_transparency():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    assert to_rgb(image).getpixel((0, 0)) == NEUTRAL_GRAY
    del image.info["transparency"]
    assert to_rgb(image).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (4, 4), 200), (200, 200, 200)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.fromarray(np.full((4, 4), 40000, np.uint16)), (156, 156, 156)),  # I;16 scaled, not clipped
        (Image.fromarray(np.full((4, 4), 0.5, np.float32)), (128, 128, 128)),  # F in [0, 1]
        (Image.new("YCbCr", (4, 4), (255, 128, 128)), (255, 255, 255)),
    ],
    ids=["L", "1", "CMYK", "I;16", "F", "YCbCr"],
)
def test_every_mode_becomes_rgb(image, expected):
    converted = to_rgb(image)
    assert converted.mode == "RGB"
    assert converted.getpixel((0, 0)) == expected


def test_32_bit_range_is_stretched():
    pixels = np.array([[0, 1_000_000], [2_000_000, 4_000_000]], dtype=np.int32)
    converted = to_rgb(Image.fromarray(pixels, mode="I"))
    assert converted.getpixel((0, 0)) == (0, 0, 0) and converted.getpixel((1, 1)) == (255, 255, 255)


def test_lab_is_converted_with_colour_management():
    lab = Image.new("LAB", (4, 4), (100, 128, 128))  # L=100 (~39%), neutral a/b
    r, g, b = to_rgb(lab).getpixel((0, 0))
    assert abs(r - g) <= 2 and abs(g - b) <= 2 and 80 < r < 120


def test_animation_uses_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = open_image(data)
    image.seek(2)  # even if something moved the animation along
    assert to_rgb(image).getpixel((5, 5)) == (255, 0, 0)


def test_damaged_and_non_image_files_are_refused():
    with pytest.raises(InputError, match="not an image"):
        open_image(b"definitely not a picture")
    png = encode(Image.new("RGB", (200, 200), (1, 2, 3)), "PNG")
    with pytest.raises(InputError, match="damaged or truncated"):
        open_image(png[: len(png) // 2])
    with pytest.raises(InputError, match="no image file"):
        open_image("/nonexistent/picture.png")


def test_decompression_bombs_are_refused_before_decoding():
    bomb = encode(Image.new("L", (10_000, 10_000)), "PNG")  # 100 MP in ~100 kB
    assert len(bomb) < 1_000_000
    with pytest.raises(InputError, match="megapixels"):
        open_image(bomb)


def test_png_parameters_round_trip(tmp_path):
    params = {"prompt": "ünïcode ✓ prompt", "seed": 5, "cfg_scale": 5.0, "top_k": None}
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", params)
    assert read_png_params(path) == {"prompt": "ünïcode ✓ prompt", "seed": 5, "cfg_scale": 5.0}
    with Image.open(path) as image:
        assert image.text["prompt"] == "ünïcode ✓ prompt" and image.text["seed"] == "5"


def test_enlarged_pngs_say_how_they_were_enlarged(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (384, 384, 3), dtype=np.uint8))
    path = save_png(image, tmp_path / "big.png", {"seed": 5}, scale=2)
    with Image.open(path) as big:
        assert big.size == (768, 768)
        assert big.tobytes() == image.resize((768, 768), Image.Resampling.LANCZOS).tobytes()
    assert read_png_params(path) == {"seed": 5, "model_output_px": 384, "display_scale": 2,
                                     "display_resample": "LANCZOS"}
    assert "display_scale" not in read_png_params(save_png(image, tmp_path / "small.png", {"seed": 5}))


def test_files_without_our_parameters_have_none(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    assert read_png_params(tmp_path / "plain.png") == {} and read_png_params(tmp_path / "photo.jpg") == {}
