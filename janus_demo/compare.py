"""A compare grid (an X/Y plot): one request's image varied along one or two axes (CFG scale,
temperature, seed, prompt), every cell drawn in one decoding loop, laid out with labels.

Each cell is the image its settings draw alone: CFG scale and temperature are per image in the
loop, and each image has its own noise (seed). Prompts of other token lengths share the loop
too, left-padded: the padded rows round like a loop of their own, up to the rare near-tie a
Gumbel-max pick can meet (README, "Reproducibility").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .generation import GenerationResult, ImageGenerator, ImageRequest, Progress
from .validation import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, check_int, check_number, check_text

AXES = {"cfg_scale": "CFG scale", "temperature": "Temperature", "seed": "Seed", "prompt": "Prompt"}
LABEL_SIZE = 18  # px, the labels' font size; margins follow from it
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: a setting and its values, in the order they are shown."""

    name: str
    values: tuple

    @classmethod
    def parse(cls, name: str, text: str) -> Axis:
        """Values as a person types them: numbers separated by commas or spaces; prompts one per line."""
        if name not in AXES:
            raise InputError(f"An axis is one of {', '.join(AXES)} (got {name!r}).")
        text = check_text(f"{AXES[name]} values", text, MAX_PROMPT_CHARS * MAX_IMAGES)
        if name == "prompt":
            return cls(name, tuple(line.strip() for line in text.splitlines() if line.strip()))
        words = [word for word in re.split(r"[,;\s]+", text) if word]
        values = []
        for word in words:
            try:
                values.append(float(word))
            except ValueError:
                raise InputError(f"{AXES[name]} values must be numbers separated by commas (got {word!r}).") from None
        if name == "seed":
            return cls(name, tuple(check_int("seed", v, 0, MAX_SEED) for v in values))
        return cls(name, tuple(check_number(name, v, 0.0, 100.0) for v in values))

    def label(self, value) -> str:
        if self.name == "prompt":
            return value
        return f"{AXES[self.name]} {value:g}"


@dataclass(frozen=True)
class CompareGrid:
    """`base`'s image (its seed, one image) with `columns` (and `rows`) varied: rows x columns cells."""

    base: ImageRequest
    columns: Axis
    rows: Axis | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", replace(self.base.with_seed(), num_images=1))  # one seed for every cell
        if self.rows is not None and self.rows.name == self.columns.name:
            raise InputError("Choose two different axes, or leave the second one empty.")
        for axis in (self.columns, self.rows):
            if axis is not None and not axis.values:
                raise InputError(f"Give at least one {AXES[axis.name]} value.")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows.values) if self.rows else 1, len(self.columns.values))

    @property
    def num_images(self) -> int:
        rows, columns = self.shape
        return rows * columns

    def caption(self, cell: ImageRequest) -> str:
        """A cell's values on the grid's axes, for its caption."""
        axes = [self.columns] + ([self.rows] if self.rows else [])
        return " · ".join(axis.label(getattr(cell, axis.name)) for axis in axes)

    def cells(self) -> list[ImageRequest]:
        """One single-image request per cell, row by row; validated like any request."""
        row_values = self.rows.values if self.rows else (None,)
        return [
            replace(self.base, **{self.columns.name: column},
                    **({self.rows.name: row} if self.rows else {}))
            for row in row_values for column in self.columns.values
        ]


@dataclass
class CompareResult:
    grid: CompareGrid
    cells: list[GenerationResult]  # one image each, row by row, with its own parameters
    image: Image.Image  # the labelled grid

    def params(self) -> dict:
        """What the grid's PNG carries: its axes and the settings every cell shares."""
        axes = {"across": [self.grid.columns.name, list(self.grid.columns.values)]}
        if self.grid.rows:
            axes["down"] = [self.grid.rows.name, list(self.grid.rows.values)]
        return {"compare_grid": axes, **asdict(self.grid.base), "model": self.cells[0].params["model"]}


def stream_grid(generator: ImageGenerator, grid: CompareGrid, *, cancel=None,
                preview_budget: float = 0.05) -> Iterator[Progress | CompareResult]:
    """Progress (previews laid out as the grid), then the `CompareResult`."""
    for event in generator.stream_many(grid.cells(), cancel=cancel, preview_budget=preview_budget):
        if isinstance(event, list):
            yield CompareResult(grid, event, grid_image(grid, [result.images[0] for result in event]))
        elif event.preview is not None:
            yield replace(event, preview=[grid_image(grid, event.preview)])
        else:
            yield event


def grid_image(grid: CompareGrid, images: list[Image.Image]) -> Image.Image:
    """The cells in rows and columns, the column values above, the row values on the left, and
    the axis names in the corner."""
    rows, columns = grid.shape
    side = images[0].width
    font = _font()
    line = LABEL_SIZE + 8
    top = line * 2
    left = min(side, 16 + max(_text_width(font, grid.rows.label(v)) for v in grid.rows.values)) if grid.rows else 0
    sheet = Image.new("RGB", (left + columns * side, top + rows * side), BACKGROUND)
    pen = ImageDraw.Draw(sheet)
    axes = [grid.columns.name] + ([grid.rows.name] if grid.rows else [])
    corner = f"{AXES[grid.columns.name]} across" + (f", {AXES[grid.rows.name]} down" if grid.rows else "")
    corner += "" if "seed" in axes else f" · seed {grid.base.seed}"  # the bundled font has no "×"
    pen.text((8, 4), corner, fill=INK, font=font)
    for c, value in enumerate(grid.columns.values):
        pen.text((left + c * side + 8, line + 2), _fit(font, grid.columns.label(value), side - 16), fill=INK,
                 font=font)
    for r in range(rows):
        if grid.rows:
            pen.text((8, top + r * side + 8), _fit(font, grid.rows.label(grid.rows.values[r]), left - 16), fill=INK,
                     font=font)
        for c in range(columns):
            sheet.paste(images[r * columns + c], (left + c * side, top + r * side))
    return sheet


def _font() -> ImageFont.ImageFont:
    """Pillow's bundled font at LABEL_SIZE (no font files to ship)."""
    return ImageFont.load_default(size=LABEL_SIZE)


def _text_width(font, text: str) -> int:
    return int(font.getlength(text))


def _fit(font, text: str, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "…") > width:
        text = text[:-1]
    return text + "…"
