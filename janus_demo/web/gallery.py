"""Drawing into a gallery, for the Draw tab, the compare grid and the API alike: widget values
in, previews and progress text while the model runs, PNGs with their parameters at the end.

Validation happens here, in the web server's process, before any GPU time is asked for.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import gradio as gr

from ..compare import CompareGrid, CompareResult
from ..generation import GenerationResult, ImageRequest, Progress
from ..images import save_png
from ..validation import MAX_SEED, check_int, check_number
from . import gpu_tasks
from .limits import CFG_RANGE, LIMITS, TEMPERATURE_RANGE

OUTPUT_ROOT = Path(tempfile.gettempdir()) / "janus_demo"  # PNGs with metadata, before Gradio serves them
OUTPUT_MAX_AGE_S = 24 * 3600
UPDATE_EVERY_S = 0.25  # progress text is sent to the browser at most this often


def image_request(prompt, negative_prompt, num_images, cfg_scale, temperature, seed, randomize_seed=False):
    """An `ImageRequest` from widget values; a random seed is drawn here so it can be shown at once."""
    check_int("num_images", num_images, 1, LIMITS.max_images)
    check_number("cfg_scale", cfg_scale, *CFG_RANGE)
    check_number("temperature", temperature, *TEMPERATURE_RANGE)
    if randomize_seed or seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    return ImageRequest(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_images=num_images,
        cfg_scale=cfg_scale,
        temperature=temperature,
        seed=seed,
    )


def progress_text(event: Progress, elapsed: float) -> str:
    left = elapsed / event.step * (event.total - event.step)
    text = f"Step {event.step} / {event.total} · {elapsed:.0f} s elapsed · about {left:.0f} s left"
    return f"{text}\n\n{event.note}" if event.note else text


def save_outputs(result: GenerationResult, scale: int = 1) -> list[tuple[str, str]]:
    """Write the PNGs (parameters in their metadata; enlarged `scale` times) and return gallery
    items (path, caption)."""
    folder = _new_output_folder()
    paths = result.save(folder, scale=scale)
    return [(str(path), f"seed {result.seed} · #{i + 1}") for i, path in enumerate(paths)]


def save_grid_outputs(result: CompareResult, scale: int = 1) -> list[tuple[str, str]]:
    """The labelled grid first, then each cell's PNG (its own parameters in its metadata)."""
    folder = _new_output_folder()
    grid = save_png(result.image, folder / f"grid_{result.grid.base.seed}.png", result.params(), scale=scale)
    rows, columns = result.grid.shape
    items = [(str(grid), f"{rows} by {columns} grid")]
    for k, (cell, request) in enumerate(zip(result.cells, result.grid.cells())):
        [path] = cell.save(folder, stem=f"cell{k + 1}", scale=scale)
        items.append((str(path), result.grid.caption(request)))
    return items


def _new_output_folder() -> Path:
    """A fresh folder for one run's PNGs, after clearing runs older than OUTPUT_MAX_AGE_S."""
    _remove_old_outputs()
    return Path(tempfile.mkdtemp(prefix="run-", dir=OUTPUT_ROOT))


def _remove_old_outputs() -> None:
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for run in OUTPUT_ROOT.glob("run-*"):
        try:
            old = run.stat().st_mtime < cutoff
        except FileNotFoundError:  # another request removed it first
            continue
        if old:
            shutil.rmtree(run, ignore_errors=True)


def gallery_stream(job: ImageRequest | CompareGrid, scale: int = 1) -> Iterator[tuple]:
    """(gallery, status, seed) updates: previews as rows complete, progress text at most every
    UPDATE_EVERY_S, the saved PNGs (enlarged `scale` times) at the end; `gr.skip()` for widgets
    with nothing new.
    Something is yielded at every heartbeat of the model's thread, so a Stop or a closed tab
    can close this generator, and so stop the model, at once."""
    started = time.perf_counter()
    shown = -UPDATE_EVERY_S
    seed = job.base.seed if isinstance(job, CompareGrid) else job.seed
    yield gr.skip(), f"Starting… seed {seed}", seed
    with closing(gpu_tasks.draw(job, LIMITS.time_limit_s)) as batches:
        for batch in batches:
            elapsed = time.perf_counter() - started
            result = next((e for e in batch if isinstance(e, (GenerationResult, CompareResult))), None)
            if isinstance(result, CompareResult):
                rows, columns = result.grid.shape
                yield (save_grid_outputs(result, scale),
                       f"Done: a {rows} by {columns} grid in {elapsed:.1f} s · seed {seed}", seed)
                continue
            if result is not None:
                count = len(result.images)
                done = f"Done: {count} image{'s' * (count > 1)} in {elapsed:.1f} s · seed {result.seed}"
                yield save_outputs(result, scale), done, result.seed
                continue
            preview = next((e.preview for e in reversed(batch) if e.preview is not None), None)
            status = gr.skip()
            if batch and (preview is not None or elapsed - shown >= UPDATE_EVERY_S):
                shown = elapsed
                status = progress_text(batch[-1], elapsed)
            yield (preview if preview is not None else gr.skip()), status, gr.skip()
