"""What --quantize does on a CPU: weights, the image loop's step and a prefill, unquantized vs int8 vs nf4, in one run.

    python benchmarks/bench_quantize.py --arch janus-pro-1b --json quantize.json   # ~3 min, ~9 GB of RAM

Same random weights for every mode. The step is the median of the product's own decoding loop
(TokenLoop: 1 image, CFG 5, sampled), the time a user waits per token; the prefill is
bench_cpu_parts.py's (a --prefill-token prompt, after a warm-up call). Also printed: the step at
which the image's tokens part from the unquantized model's, a rough sign of how much the
rounding moves (random weights: near-ties everywhere).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import transformers

import bench_cpu_parts as parts_bench  # this folder; it puts the repository root on sys.path
from janus_demo import load_engine  # noqa: E402
from janus_demo.generation import ImageRequest, Slice  # noqa: E402
from janus_demo.presets import PRESETS  # noqa: E402

MODES = (None, "int8", "nf4")
PROMPT = "a red fox in the snow, watercolor"
SEED = 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="janus-pro-1b", choices=list(PRESETS))
    parser.add_argument("--prefill", type=int, default=128, help="prompt tokens for the prefill timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="decoding steps of the loop (the first 4 are not timed)")
    parser.add_argument("--num-images", type=int, default=1, help="images in the loop, each with CFG")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    if args.steps < 6:
        parser.error("--steps must be at least 6 (4 untimed steps after the prefill)")
    return args


@torch.inference_mode()
def loop_step(engine, steps: int, images: int) -> tuple[float, torch.Tensor]:
    """Median seconds per step of the image loop after 4 untimed steps, and the tokens it drew."""
    request = ImageRequest(PROMPT, num_images=images, cfg_scale=5.0, temperature=1.0)
    loop = engine.generator.token_loop([Slice(request, SEED, first=0, count=images)], num_tokens=steps)
    times = []
    started = time.perf_counter()
    for _ in loop.steps(use_cuda_graph=False):
        now = time.perf_counter()
        times.append(now - started)
        started = now
    return statistics.median(times[5:]), loop.tokens


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    rows, tokens = [], []
    for mode in MODES:
        engine = load_engine(f"random:{args.arch}", device="cpu", quantize=mode)
        step, drawn = loop_step(engine, args.steps, args.num_images)
        parts = parts_bench.Parts(engine.model, args.prefill)
        with torch.inference_mode():
            prefill = parts_bench.seconds(parts.prefill, args.repeats)
        language = engine.model.model.language_model
        weights = sum(p.numel() * p.element_size() for p in language.layers.parameters())
        tokens.append(drawn)
        parted = (drawn != tokens[0]).any(0).nonzero()  # the first step where any image differs
        rows.append({"quantize": mode or "none", "llm_layer_weights_mb": round(weights / 2**20, 1),
                     "step_s": round(step, 4), "prefill_s": round(prefill, 4),
                     "tokens_part_at_step": int(parted[0]) if len(parted) else None})
        print(f"{mode or 'none':6} layers {rows[-1]['llm_layer_weights_mb']:8.1f} MB   image loop step "
              f"({args.num_images} images, CFG) {step:7.3f} s   prefill {args.prefill} tokens {prefill:7.3f} s   tokens part from unquantized at "
              f"step {rows[-1]['tokens_part_at_step']}", flush=True)
        del engine, parts
    base = rows[0]
    for row in rows[1:]:
        print(f"{row['quantize']}: step {row['step_s'] / base['step_s']:.2f}x, prefill "
              f"{row['prefill_s'] / base['prefill_s']:.2f}x the unquantized time")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"arch": args.arch, "num_images": args.num_images, "torch": torch.__version__,
                       "threads": torch.get_num_threads(),
                       "figures": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
