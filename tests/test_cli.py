"""The command line: PNGs with their parameters, a streamed answer, and plain-language errors."""

from __future__ import annotations

import sys

from PIL import Image

from janus_demo.__main__ import main
from janus_demo.generation import ImageGenerator
from janus_demo.images import read_png_params, save_png
from janus_demo.redraw import NOT_OURS


def test_generate_writes_pngs_with_metadata_and_shows_progress(cli, tmp_path):
    run = cli("generate", "a red cat", "-n", "2", "--seed", "1", "--out", str(tmp_path), "--model", "tiny-random")
    assert run.returncode == 0, run.stderr
    paths = run.stdout.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["janus_1_0.png", "janus_1_1.png"]
    assert "576/576" in run.stderr  # the progress bar reached the end
    with Image.open(paths[0]) as image:
        assert image.size == (384, 384) and image.format == "PNG"
    params = read_png_params(paths[1])
    assert params["prompt"] == "a red cat" and params["seed"] == 1
    assert params["cfg_scale"] == 5.0 and params["temperature"] == 1.0
    assert params["model"] == "random:tiny" and params["image_index"] == 1


def test_same_seed_same_pngs(cli, tmp_path):
    for out in ("a", "b"):
        run = cli("generate", "x", "-n", "1", "--seed", "7", "--out", str(tmp_path / out), "--model", "tiny-random", "-q")
        assert run.returncode == 0, run.stderr
    with Image.open(tmp_path / "a" / "janus_7_0.png") as a, Image.open(tmp_path / "b" / "janus_7_0.png") as b:
        assert a.tobytes() == b.tobytes()


def test_ask_streams_an_answer(cli, tmp_path, monkeypatch):
    image = tmp_path / "scene.png"
    Image.new("RGB", (320, 240), (10, 120, 200)).save(image)
    args = ["ask", str(image), "What is in this picture?", "--model", "tiny-random", "--max-new-tokens", "12",
            "--temperature", "0"]
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    writes: list[str] = []  # in-process, to see the answer reach the terminal piece by piece
    monkeypatch.setattr(sys, "stdout", type("Terminal", (), {"write": writes.append, "flush": lambda self: None})())
    assert main(args + ["-q"]) == 0
    assert len([w for w in writes if w.strip()]) > 1 and "".join(writes) == run.stdout


def test_progress_bar_counts_every_batch_when_memory_splits_the_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ImageGenerator, "images_that_fit", lambda self, request, tokens, most=None: 1)
    assert main(["generate", "x", "-n", "2", "--seed", "3", "--out", str(tmp_path), "--model", "tiny-random"]) == 0
    assert "1152/1152" in capsys.readouterr().err


def test_errors_are_one_sentence(cli, tmp_path):
    run = cli("ask", str(tmp_path / "missing.png"), "q", "--model", "tiny-random")
    assert run.returncode == 1 and "error: There is no image file at" in run.stderr
    assert "Traceback" not in run.stderr
    run = cli("generate", "x", "-n", "0", "--model", "tiny-random")
    assert run.returncode == 1 and "error: num_images must be a whole number" in run.stderr
    assert "Traceback" not in run.stderr


# ----- generate --from: one image of a batch, redrawn alone from its own PNG ----------------
# Pixel equality relies on two things: image k of seed s samples the same tokens as image 0 of
# seed s + k drawn alone (per-image noise; with the inverse-CDF sampler a batch's rows can round
# differently from a single one's and flip a token: these settings are ones where it holds on
# this machine's tiny-random), and the VQ decode taking one image per pass.
BATCH = dict(prompt="a red cat", num_images=3, seed=11, cfg_scale=4.0, negative_prompt="blurry")
def test_generate_from_a_png_redraws_that_image_alone_pixel_for_pixel(cli, tmp_path):
    run = cli("generate", "a red cat", "-n", "3", "--seed", "11", "--cfg", "4", "--negative", "blurry",
              "--out", str(tmp_path / "batch"), "--model", "tiny-random", "-q", timeout=900)
    assert run.returncode == 0, run.stderr
    redraw = cli("generate", "--from", str(tmp_path / "batch" / "janus_11_2.png"), "--out", str(tmp_path / "alone"),
                 "-q", timeout=900)  # no --model: the file's own
    assert redraw.returncode == 0, redraw.stderr
    assert redraw.stdout.split() == [str(tmp_path / "alone" / "janus_13_0.png")]
    with Image.open(tmp_path / "batch" / "janus_11_2.png") as original, Image.open(redraw.stdout.strip()) as again:
        assert again.size == (384, 384) and again.tobytes() == original.tobytes()
    with Image.open(tmp_path / "batch" / "janus_11_1.png") as neighbour, Image.open(redraw.stdout.strip()) as again:
        assert again.tobytes() != neighbour.tobytes()
    params = read_png_params(redraw.stdout.strip())
    assert (params["seed"], params["num_images"], params["image_index"]) == (13, 1, 0)
    assert params["negative_prompt"] == "blurry" and params["cfg_scale"] == 4.0 and params["prompt"] == "a red cat"


def test_generate_from_an_enlarged_png_enlarges_the_same_way(engine, tmp_path, capsys):
    source = engine.generate_images(**BATCH).save(tmp_path / "batch", scale=2)[2]
    assert main(["generate", "--from", str(source), "--out", str(tmp_path / "alone"), "--model", "tiny-random",
                 "-q"]) == 0
    with Image.open(source) as original, Image.open(capsys.readouterr().out.strip()) as again:
        assert again.size == (768, 768) and again.tobytes() == original.tobytes()


def test_generate_from_a_foreign_png_says_why_in_one_sentence(engine, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (384, 384), (200, 30, 30)).save(plain)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64)).save(photo)
    other_model = tmp_path / "other.png"
    save_png(Image.new("RGB", (384, 384)), other_model,
             {**engine.generate_images("x", num_images=1, seed=1).image_params(0),
              "model": "deepseek-community/Janus-Pro-7B"})
    for path in (plain, photo):
        assert main(["generate", "--from", str(path), "--out", str(tmp_path), "-q"]) == 1
        assert capsys.readouterr().err == f"error: {NOT_OURS}\n"
    assert main(["generate", "--from", str(other_model), "--model", "tiny-random", "--out", str(tmp_path), "-q"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: That image was drawn by deepseek-community/Janus-Pro-7B, but this runs random:tiny; "
        "redraw it with the model that drew it.")
    assert not list(tmp_path.glob("janus_*.png"))
