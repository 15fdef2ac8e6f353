"""Compare grids: every cell in one loop, each the image its settings draw alone, laid out with labels."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from janus_demo import ImageRequest, InputError
from janus_demo.compare import Axis, CompareGrid, CompareResult, grid_image
from janus_demo.generation import Progress

# @pytest.mark.seeds: CI reruns the test with the other CPU family's kernels (AVX2).


def run(engine, grid: CompareGrid) -> tuple[list[Progress], CompareResult]:
    events = list(engine.compare_stream(grid))  # the app's preview budget: the first row is always previewed
    assert isinstance(events[-1], CompareResult)
    return events[:-1], events[-1]


@pytest.mark.seeds
def test_a_cfg_by_temperature_grid_is_one_loop_of_the_images_drawn_alone(engine, loop_rows):
    grid = CompareGrid(ImageRequest("a red fox in the snow", seed=5), Axis("cfg_scale", (1.0, 5.0)),
                       Axis("temperature", (0.0, 1.0)))
    progress, result = run(engine, grid)
    assert loop_rows == [4 + 2]  # one loop: 4 conditional rows, an unconditional row per cell at CFG 5
    assert [(c.prompt, c.cfg_scale, c.temperature, c.seed) for c in grid.cells()] == [
        ("a red fox in the snow", 1.0, 0.0, 5), ("a red fox in the snow", 5.0, 0.0, 5),
        ("a red fox in the snow", 1.0, 1.0, 5), ("a red fox in the snow", 5.0, 1.0, 5)]
    for cell, request in zip(result.cells, grid.cells()):
        alone = engine.generate_images(request.prompt, num_images=1, seed=5, cfg_scale=request.cfg_scale,
                                       temperature=request.temperature)
        assert torch.equal(cell.tokens, alone.tokens) and cell.images[0].tobytes() == alone.images[0].tobytes()
        assert (cell.params["cfg_scale"], cell.params["temperature"]) == (request.cfg_scale, request.temperature)
    assert len({cell.images[0].tobytes() for cell in result.cells}) == 4  # the settings made four images
    # The sheet: the 2 x 2 cells fill its bottom-right corner, pasted as drawn; labels above and left.
    left, top = result.image.width - 2 * 384, result.image.height - 2 * 384
    assert left > 0 and top > 0
    for k, cell in enumerate(result.cells):
        x, y = left + 384 * (k % 2), top + 384 * (k // 2)
        assert result.image.crop((x, y, x + 384, y + 384)).tobytes() == cell.images[0].tobytes()
    previews = [e.preview for e in progress if e.preview]
    assert previews and all(len(p) == 1 and p[0].size == result.image.size for p in previews)


@pytest.mark.seeds
def test_prompts_of_other_lengths_and_seeds_share_the_loop(engine, loop_rows):
    """Prompts of other token lengths are left-padded in the one loop. On the tiny model a padded
    row's logits move by ~1e-7 (as any batch shape's), far below the Gumbel gap: exact equality."""
    prompts = ("a lighthouse", "two boats on a calm lake at night, oil painting")
    grid = CompareGrid(ImageRequest("unused", cfg_scale=4.0, temperature=1.0), Axis("prompt", prompts),
                       Axis("seed", (3, 8)))
    _, result = run(engine, grid)
    assert len(loop_rows) == 1 and loop_rows[0] == 8
    for cell, request in zip(result.cells, grid.cells()):
        alone = engine.generate_images(request.prompt, num_images=1, seed=request.seed, cfg_scale=4.0)
        assert torch.equal(cell.tokens, alone.tokens), grid.caption(request)
    assert result.params()["compare_grid"] == {"across": ["prompt", list(prompts)], "down": ["seed", [3, 8]]}


@pytest.mark.seeds
def test_a_grid_too_large_for_memory_is_drawn_in_chunks_of_the_same_images(engine, monkeypatch):
    from janus_demo.generation import ImageGenerator

    grid = CompareGrid(ImageRequest("a blue bird", seed=1), Axis("cfg_scale", (2.0, 3.0, 6.0)))
    _, whole = run(engine, grid)
    monkeypatch.setattr(ImageGenerator, "images_that_fit", lambda self, request, tokens, most=None: 2)
    progress, chunked = run(engine, grid)
    assert progress[-1].total == 2 * 576 and "2 batches" in progress[-1].note
    assert chunked.image.tobytes() == whole.image.tobytes()


def test_captions_and_labels_name_the_values(engine):
    grid = CompareGrid(ImageRequest("a cat", seed=2), Axis("temperature", (0.5, 1.25)), Axis("prompt", ("a cat",)))
    assert [grid.caption(c) for c in grid.cells()] == ["Temperature 0.5 · a cat", "Temperature 1.25 · a cat"]
    blank = [Image.new("RGB", (384, 384), "gray")] * 2
    sheet = grid_image(grid, blank)
    assert sheet.size[0] > 2 * 384 and sheet.size[1] > 384  # room for the row labels and the column labels
    band = sheet.crop((0, 0, sheet.width, sheet.height - 384)).convert("L")
    assert band.getextrema()[0] < 100  # dark text was drawn in the label band


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("cfg_scale", "3, five", "CFG scale values must be numbers"),
        ("size", "1, 2", "An axis is one of"),
        ("seed", "1.5", "seed must be a whole number"),
        ("temperature", "  ", "empty"),
    ],
)
def test_bad_axis_values_are_refused_in_one_sentence(name, text, message):
    with pytest.raises(InputError, match=message):
        Axis.parse(name, text)


def test_axes_parse_as_typed():
    assert Axis.parse("cfg_scale", "3, 5  7;9").values == (3.0, 5.0, 7.0, 9.0)
    assert Axis.parse("seed", "1 2 3").values == (1, 2, 3)
    assert Axis.parse("prompt", "a fox\n\n  a boat  \n").values == ("a fox", "a boat")
    with pytest.raises(InputError, match="two different axes"):
        CompareGrid(ImageRequest("a cat"), Axis("seed", (1, 2)), Axis("seed", (3,)))
