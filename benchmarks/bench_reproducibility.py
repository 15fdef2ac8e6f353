"""How often an image is bit-identical however it was drawn: the seed contract, measured.

    python benchmarks/bench_reproducibility.py --presets tiny lively small --json out.json
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_reproducibility.py

Image i of seed s is promised to be image 0 of seed s + i. For each preset this draws the
reference, every image alone, then compares against the same images drawn
  in a batch      of 2, 3, 4, 8 and 16 images (one loop, more rows per matmul)
  in chunks       16 images in memory-sized chunks of 3 (5 loops)
  in a shared loop  beside another request whose prompt has the same token length (no padding),
                  or a different one (left padding: other attention shapes)
and prints the share with identical tokens and with identical pixels. Matmuls over other
numbers of rows round differently (~1e-6); the sampler decides whether that flips a token.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from janus_demo import load_engine  # noqa: E402
from janus_demo.generation import ImageRequest, Slice  # noqa: E402

PROMPT = "a red fox in the snow"
SAME_LENGTH = "a red fox in the sun"  # the same number of tokens as PROMPT (checked below)
OTHER_LENGTH = "two boats on a calm lake at night, oil painting"
SEED = 1000
MOST = 16
BATCHES = (2, 3, 4, 8, 16)
CHUNK = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "lively", "small"])
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def fingerprints(result) -> list[tuple[tuple, bytes]]:
    """(tokens, pixels) per image of a GenerationResult."""
    return [(tuple(t.tolist()), image.tobytes()) for t, image in zip(result.tokens, result.images)]


def share(drawn: list[tuple], alone: list[tuple]) -> dict:
    """How many of `drawn` equal their counterpart drawn alone, in tokens and in pixels."""
    return {
        "images": len(drawn),
        "tokens": sum(d[0] == a[0] for d, a in zip(drawn, alone)),
        "pixels": sum(d[1] == a[1] for d, a in zip(drawn, alone)),
    }


def shared_loop(engine, requests: list[ImageRequest]) -> list[list[tuple]]:
    """The requests decoded in ONE loop, as `--batch-users` does, then each decoded on its own."""
    generator = engine.generator
    slices = [Slice(request, request.seed, first=0, count=request.num_images) for request in requests]
    for _ in generator.decode_slices(slices, is_cancelled=lambda: False, budget=_no_previews()):
        pass
    return [[(tuple(t.tolist()), im.tobytes()) for t, im in zip(part.tokens, generator.decode(part.tokens))]
            for part in slices]


def _no_previews():
    from janus_demo.generation import PreviewBudget

    return PreviewBudget(0)


def measure(preset: str) -> dict:
    engine = load_engine("tiny-random" if preset == "tiny" else f"random:{preset}", device="cpu")

    def draw(prompt: str, n: int, seed: int) -> list[tuple]:
        *_, result = engine.iter_images(prompt, num_images=n, seed=seed, preview_budget=0)
        return fingerprints(result)

    alone = [draw(PROMPT, 1, SEED + i)[0] for i in range(MOST)]
    rows = {f"batch of {n}": share(draw(PROMPT, n, SEED), alone) for n in BATCHES}

    fits = engine.generator.images_that_fit
    engine.generator.images_that_fit = lambda *args, **kwargs: CHUNK
    try:
        rows[f"chunks of {CHUNK} (16 images)"] = share(draw(PROMPT, MOST, SEED), alone)
    finally:
        engine.generator.images_that_fit = fits

    for label, other in (("same", SAME_LENGTH), ("other", OTHER_LENGTH)):
        lengths = {engine.generator.prompt_tokens(ImageRequest(p)) for p in (PROMPT, other)}
        assert (len(lengths) == 1) == (label == "same"), f"{other!r} must have {label} token length"
        mine = ImageRequest(PROMPT, num_images=4, seed=SEED)
        theirs = ImageRequest(other, num_images=4, seed=SEED + 100)
        theirs_alone = [draw(other, 1, SEED + 100 + i)[0] for i in range(4)]
        together = shared_loop(engine, [mine, theirs])
        counts = [share(together[0], alone[:4]), share(together[1], theirs_alone)]
        rows[f"shared loop, {label} token length"] = {k: sum(c[k] for c in counts) for k in counts[0]}
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    machine = {"cpu": platform.processor() or platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"# {machine}")
    results = {"machine": machine, "presets": {}}
    print(f"{'preset':8} {'drawn':34} {'images':>6} {'same tokens':>12} {'same pixels':>12}")
    for preset in args.presets:
        rows = measure(preset)
        results["presets"][preset] = rows
        for label, row in rows.items():
            n = row["images"]
            print(f"{preset:8} {label:34} {n:6d} {row['tokens']:6d} ({row['tokens'] / n:4.0%}) "
                  f"{row['pixels']:5d} ({row['pixels'] / n:4.0%})", flush=True)
        total = {k: sum(r[k] for r in rows.values()) for k in ("images", "tokens", "pixels")}
        print(f"{preset:8} {'all':34} {total['images']:6d} {total['tokens']:6d} "
              f"({total['tokens'] / total['images']:4.0%}) {total['pixels']:5d} "
              f"({total['pixels'] / total['images']:4.0%})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
