"""What a compare grid costs: its cells in one loop vs the same images one by one vs a plain batch.

    python benchmarks/bench_compare.py --arch small --json out.json

One run, the same weights, measured side by side:
  one by one   each cell drawn alone with its own settings (what a user would do by hand)
  grid         the CompareGrid: every cell in one decoding loop, per-image CFG and temperature
  plain batch  one request of as many images at one CFG scale and temperature (the floor)
The grid is CFG scale x temperature, 3 x 3 by default: a third of its cells at CFG 1 (no
unconditional row), so it holds fewer rows than the plain batch at CFG 5. Reports seconds,
the ratios, and whether every grid cell equals the same image drawn alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from janus_demo import ImageRequest, load_engine  # noqa: E402
from janus_demo.compare import Axis, CompareGrid  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", help="a random preset (tiny, small, ...), or a model id or folder")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 5.0], help="the grid's columns")
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.7, 1.0, 1.3], help="the grid's rows")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


PROMPT, SEED = "a red fox in the snow", 7


def timed(work):
    started = time.perf_counter()
    out = work()
    return time.perf_counter() - started, out


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = args.arch if "/" in args.arch or args.arch == "tiny-random" else f"random:{args.arch}"
    engine = load_engine(name, device=args.device)
    grid = CompareGrid(ImageRequest(PROMPT, seed=SEED), Axis("cfg_scale", tuple(args.cfg)),
                       Axis("temperature", tuple(args.temperature)))
    cells = grid.cells()
    engine.generate_images(PROMPT, num_images=1, seed=0)  # warm-up

    def one_by_one():
        return [engine.generate_images(c.prompt, num_images=1, seed=c.seed, cfg_scale=c.cfg_scale,
                                       temperature=c.temperature).tokens[0] for c in cells]

    def in_a_grid():
        return list(engine.compare_stream(grid))[-1]

    def plain_batch():
        return engine.generate_images(PROMPT, num_images=len(cells), seed=SEED, cfg_scale=5.0)

    alone_s, alone = timed(one_by_one)
    grid_s, result = timed(in_a_grid)
    batch_s, _ = timed(plain_batch)
    identical = sum(torch.equal(cell.tokens[0], tokens) for cell, tokens in zip(result.cells, alone))
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, {engine.device}",
        "arch": args.arch, "cells": len(cells), "cfg": args.cfg, "temperature": args.temperature,
        "one_by_one_s": round(alone_s, 2), "grid_s": round(grid_s, 2), "plain_batch_s": round(batch_s, 2),
        "grid_vs_one_by_one": round(grid_s / alone_s, 3), "grid_vs_plain_batch": round(grid_s / batch_s, 3),
        "cells_identical_to_alone": identical,
    }
    print(f"# {figures['machine']} · {args.arch} · {len(cells)} cells "
          f"(CFG {args.cfg} x temperature {args.temperature})")
    print(f"one by one   {alone_s:8.2f} s")
    print(f"grid         {grid_s:8.2f} s   {figures['grid_vs_one_by_one']:.2f}x one by one, "
          f"{figures['grid_vs_plain_batch']:.2f}x the plain batch")
    print(f"plain batch  {batch_s:8.2f} s   ({len(cells)} images at CFG 5, one loop)")
    print(f"grid cells identical to the image drawn alone: {identical} / {len(cells)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
